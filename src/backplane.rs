//! The cross-pod backplane: topics shared by every ringws process connected
//! to the same NATS server (`--backplane nats://HOST:PORT`).
//!
//! One broker connection per process, on a thread of its own
//! (`ringws-backplane`, a tokio current-thread runtime) through the
//! maintained `async-nats` client. The workers talk to it through a bounded
//! channel (`Backplane`, the hub's `Bridge`): a topic that gets its
//! first subscriber in the process is subscribed on the broker, one that
//! loses its last is unsubscribed; a publish made here reaches this
//! process's subscribers directly and goes to the broker once, as the
//! frame it already is. What arrives from the broker is delivered to this
//! process's subscribers only (never forwarded again), and the connection
//! is made with `no_echo`, so the broker does not send a process its own
//! publishes back: nothing is delivered twice.
//!
//! While the broker is unreachable, local delivery goes on, publishes that
//! cannot be forwarded are dropped and counted
//! (`ringws_backplane_not_forwarded_total`), the client reconnects with
//! backoff (up to 5 s apart) and resubscribes, `ringws_backplane_up` is 0,
//! and one log line marks each change of state. `/readyz` does not follow
//! the broker: a broker outage is every pod's at once, and failing
//! readiness everywhere would take the whole service out of its routes,
//! while each pod still serves its own clients and rooms.
//!
//! On the broker, topic `NAME` is subject `ringws.NAME` with every byte
//! outside `[A-Za-z0-9_-]` written `~XX` (hex), so any topic name is one
//! subject token. The payload is the WebSocket frame (text or binary,
//! unfragmented, unmasked); frames from the broker are checked before they
//! reach a client (header, length, UTF-8 of text).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::mpsc;

use crate::metrics::BackplaneMetrics;
use crate::pubsub::{Bridge, Frame, Hub};

/// Subscription changes from the workers to the backplane thread (never
/// dropped: an unbounded channel, one command per topic that comes or goes
/// in the process).
#[derive(Debug)]
enum Control {
    Subscribe(Arc<str>),
    Unsubscribe(Arc<str>),
}

/// Publishes waiting for the backplane thread, at most: beyond, a publish
/// is not forwarded (counted), so a stalled broker connection holds
/// bounded memory.
const QUEUE: usize = 65_536;

/// The workers' end of the backplane.
#[derive(Debug)]
pub(crate) struct Backplane {
    control: mpsc::UnboundedSender<Control>,
    /// Publishes to forward: the topic and the frame.
    publish: mpsc::Sender<(Arc<str>, Frame)>,
    metrics: Arc<BackplaneMetrics>,
}

impl Bridge for Backplane {
    fn subscribe(&self, topic: &Arc<str>) {
        let _ = self.control.send(Control::Subscribe(topic.clone()));
    }

    fn unsubscribe(&self, topic: &Arc<str>) {
        let _ = self.control.send(Control::Unsubscribe(topic.clone()));
    }

    fn forward(&self, topic: &str, frame: &Frame) {
        if !self.metrics.up.load(Relaxed)
            || self
                .publish
                .try_send((Arc::from(topic), frame.clone()))
                .is_err()
        {
            self.metrics.not_forwarded.fetch_add(1, Relaxed);
        }
    }
}

/// The broker subject of topic `name`.
pub fn subject(name: &str) -> String {
    let mut s = String::with_capacity(7 + name.len());
    s.push_str("ringws.");
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
            s.push(b as char);
        } else {
            s.push_str(&format!("~{b:02X}"));
        }
    }
    s
}

/// Starts the backplane thread for `url` (`nats://HOST:PORT`), delivering
/// what the broker sends to `hub`. Returns once the thread runs; the broker
/// may still be unreachable (it is retried).
pub(crate) fn start(
    url: &str,
    hub: &Arc<Hub>,
    metrics: Arc<BackplaneMetrics>,
) -> std::io::Result<Backplane> {
    if !url.starts_with("nats://") {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("--backplane {url}: only nats://HOST:PORT is supported"),
        ));
    }
    let (control, control_rx) = mpsc::unbounded_channel();
    let (publish, publish_rx) = mpsc::channel(QUEUE);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (url, hub, m) = (url.to_owned(), Arc::downgrade(hub), metrics.clone());
    std::thread::Builder::new()
        .name("ringws-backplane".into())
        .spawn(move || runtime.block_on(run(url, hub, m, control_rx, publish_rx)))?;
    Ok(Backplane {
        control,
        publish,
        metrics,
    })
}

/// The backplane thread: connects, then carries out the workers' commands
/// until they are gone (the server stopped).
async fn run(
    url: String,
    hub: std::sync::Weak<Hub>,
    metrics: Arc<BackplaneMetrics>,
    mut control: mpsc::UnboundedReceiver<Control>,
    mut publish: mpsc::Receiver<(Arc<str>, Frame)>,
) {
    let events = metrics.clone();
    let shown = url.clone();
    let options = async_nats::ConnectOptions::new()
        .no_echo()
        .retry_on_initial_connect()
        .max_reconnects(None)
        .reconnect_delay_callback(|attempt| {
            Duration::from_millis(100u64.saturating_mul(1 << attempt.min(6)).min(5_000))
        })
        .event_callback(move |event| {
            let (events, url) = (events.clone(), shown.clone());
            async move {
                match event {
                    async_nats::Event::Connected => {
                        events.up.store(true, Relaxed);
                        tracing::info!(%url, "backplane connected");
                    }
                    async_nats::Event::Disconnected => {
                        events.up.store(false, Relaxed);
                        tracing::warn!(%url, "backplane disconnected: delivering locally only, reconnecting");
                    }
                    other => tracing::debug!(%url, event = %other, "backplane"),
                }
            }
        });
    let client = match options.connect(url.as_str()).await {
        Ok(client) => client,
        Err(e) => {
            tracing::error!(%url, error = %e, "backplane: cannot connect; local delivery only");
            while publish.recv().await.is_some() {
                metrics.not_forwarded.fetch_add(1, Relaxed);
            }
            return;
        }
    };
    if client.connection_state() == async_nats::connection::State::Connected {
        metrics.up.store(true, Relaxed);
    }
    let mut subscriptions: HashMap<Arc<str>, tokio::task::JoinHandle<()>> = HashMap::new();
    loop {
        tokio::select! {
            // Subscriptions first: a publish after a subscribe may be
            // answered by the other pods at once.
            biased;
            c = control.recv() => match c {
                Some(Control::Subscribe(topic)) => {
                    let subscriber = match client.subscribe(subject(&topic)).await {
                        Ok(s) => s,
                        Err(e) => {
                            tracing::warn!(%topic, error = %e, "backplane: subscribe failed");
                            continue;
                        }
                    };
                    let (hub, metrics, name) = (hub.clone(), metrics.clone(), topic.clone());
                    let task = tokio::spawn(receive(subscriber, name, hub, metrics));
                    if let Some(old) = subscriptions.insert(topic, task) {
                        old.abort();
                    }
                }
                // Dropping the subscriber (with its task) unsubscribes.
                Some(Control::Unsubscribe(topic)) => {
                    if let Some(task) = subscriptions.remove(&topic) {
                        task.abort();
                    }
                }
                None => break,
            },
            p = publish.recv() => match p {
                Some((topic, frame)) => {
                    let payload = bytes::Bytes::copy_from_slice(&frame);
                    match client.publish(subject(&topic), payload).await {
                        Ok(()) => metrics.forwarded.fetch_add(1, Relaxed),
                        Err(_) => metrics.not_forwarded.fetch_add(1, Relaxed),
                    };
                }
                None => break,
            },
        }
    }
    let _ = client.flush().await;
}

/// Delivers what the broker sends on one topic to this process's
/// subscribers.
async fn receive(
    mut subscriber: async_nats::Subscriber,
    topic: Arc<str>,
    hub: std::sync::Weak<Hub>,
    metrics: Arc<BackplaneMetrics>,
) {
    while let Some(message) = subscriber.next().await {
        let Some(hub) = hub.upgrade() else {
            return;
        };
        if !valid_frame(&message.payload) {
            metrics.invalid.fetch_add(1, Relaxed);
            continue;
        }
        metrics.received.fetch_add(1, Relaxed);
        hub.deliver_from_backplane(&topic, Frame::from(&message.payload[..]));
    }
}

/// A final, unmasked text or binary frame with no reserved bits, whose
/// length field matches its payload, and whose text is UTF-8.
fn valid_frame(bytes: &[u8]) -> bool {
    let [b0, b1, rest @ ..] = bytes else {
        return false;
    };
    if b0 & 0xF0 != 0x80 || !matches!(b0 & 0x0F, 1 | 2) || b1 & 0x80 != 0 {
        return false;
    }
    let (len, payload) = match b1 & 0x7F {
        126 if rest.len() >= 2 => (
            usize::from(u16::from_be_bytes([rest[0], rest[1]])),
            &rest[2..],
        ),
        127 if rest.len() >= 8 => {
            let mut n = [0u8; 8];
            n.copy_from_slice(&rest[..8]);
            (u64::from_be_bytes(n) as usize, &rest[8..])
        }
        126 | 127 => return false,
        n => (usize::from(n), rest),
    };
    len == payload.len() && (b0 & 0x0F == 2 || std::str::from_utf8(payload).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_topic_name_is_one_subject_token() {
        assert_eq!(subject("room-1_a"), "ringws.room-1_a");
        assert_eq!(subject("a.b c>*"), "ringws.a~2Eb~20c~3E~2A");
        assert_eq!(subject("é"), "ringws.~C3~A9");
    }

    #[test]
    fn only_well_formed_data_frames_pass() {
        use crate::pubsub::frame;
        for (opcode, payload) in [
            (1, &b"hi"[..]),
            (2, &[0xFF; 200][..]),
            (2, &[7; 70_000][..]),
        ] {
            assert!(
                valid_frame(&frame(opcode, payload)),
                "{opcode} {}",
                payload.len()
            );
        }
        assert!(!valid_frame(&frame(1, &[0xFF, 0xFE])), "not UTF-8");
        assert!(!valid_frame(&frame(9, b"")), "a ping");
        let mut short = frame(2, b"abc").to_vec();
        short.pop();
        assert!(!valid_frame(&short), "truncated");
        assert!(!valid_frame(&[0x82, 0x83, 1, 2, 3, 4, 5, 6, 7]), "masked");
        assert!(!valid_frame(&[0x02, 0x00]), "not final");
        assert!(!valid_frame(&[0x81]));
    }
}
