//! Messages made per send, for `--payload json` and `--deflate`: the JSON
//! generator, and [`Messages`], a [`Source`] that builds each frame (payload,
//! compression, mask) as it is sent and keeps the payloads in flight to
//! check the echoes against.
//!
//! The JSON payload is a chat/notification-like object of exactly `-s`
//! bytes:
//!
//! ```text
//! {"seq":42,"type":"chat.message","room":"general","user":"maria","ts":1700000012345,"text":"..."}
//! ```
//!
//! `text` is words drawn from a fixed vocabulary of about 300 words
//! (commonest first, drawn with a skew towards the start of the list, as
//! word frequencies are), cut to fill the size; type, room and user come
//! from small lists. Every draw comes from a generator seeded with the
//! connection's number, so a run sends the same messages to every server,
//! and no two messages are the same: what compression gets from them is
//! what it would get from real chat traffic, not from a repeated string.

use std::collections::VecDeque;

use crate::deflate::{Deflater, RSV1};
use crate::ws::{self, OP_BINARY, OP_TEXT, Rng, Source};

/// What each message carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Payload {
    /// A fixed ASCII pattern whose first 8 bytes are the sequence number in
    /// hex (the default; compresses to almost nothing).
    Pattern,
    /// A chat/notification-like JSON object of -s bytes with pseudo-random
    /// text (compresses as real chat messages do).
    Json,
}

impl Payload {
    pub fn name(self) -> &'static str {
        match self {
            Payload::Pattern => "pattern",
            Payload::Json => "json",
        }
    }
}

/// The smallest `-s` a JSON payload can be made at.
pub const JSON_MIN: usize = 160;

const USERS: [&str; 16] = [
    "maria", "james", "wei", "aisha", "lucas", "sofia", "arjun", "emma", "kenji", "olga", "mateo",
    "chloe", "tariq", "nina", "pavel", "grace",
];
const ROOMS: [&str; 6] = ["general", "support", "random", "deploys", "design", "sales"];
const TYPES: [&str; 4] = ["chat.message", "chat.message", "chat.reply", "notification"];

/// About 300 words, the commonest first.
const WORDS: &[&str] = &[
    "the",
    "to",
    "and",
    "a",
    "i",
    "you",
    "it",
    "is",
    "of",
    "that",
    "in",
    "we",
    "for",
    "this",
    "on",
    "be",
    "have",
    "with",
    "not",
    "can",
    "so",
    "do",
    "are",
    "just",
    "but",
    "will",
    "if",
    "at",
    "me",
    "my",
    "what",
    "was",
    "all",
    "get",
    "think",
    "now",
    "there",
    "about",
    "they",
    "know",
    "one",
    "up",
    "out",
    "no",
    "yes",
    "ok",
    "like",
    "should",
    "from",
    "or",
    "an",
    "our",
    "your",
    "need",
    "see",
    "when",
    "going",
    "would",
    "time",
    "let",
    "us",
    "today",
    "could",
    "then",
    "here",
    "how",
    "did",
    "has",
    "more",
    "go",
    "back",
    "after",
    "new",
    "make",
    "some",
    "been",
    "good",
    "still",
    "also",
    "thanks",
    "it's",
    "don't",
    "i'm",
    "can't",
    "let's",
    "that's",
    "work",
    "check",
    "team",
    "meeting",
    "tomorrow",
    "later",
    "please",
    "sure",
    "update",
    "issue",
    "fix",
    "build",
    "test",
    "deploy",
    "release",
    "branch",
    "merge",
    "review",
    "change",
    "server",
    "client",
    "request",
    "response",
    "error",
    "log",
    "logs",
    "config",
    "ticket",
    "customer",
    "user",
    "users",
    "data",
    "report",
    "call",
    "week",
    "morning",
    "afternoon",
    "night",
    "done",
    "working",
    "looks",
    "great",
    "nice",
    "right",
    "yeah",
    "maybe",
    "probably",
    "already",
    "again",
    "first",
    "last",
    "next",
    "before",
    "into",
    "over",
    "only",
    "any",
    "because",
    "which",
    "who",
    "where",
    "why",
    "these",
    "those",
    "them",
    "their",
    "his",
    "her",
    "him",
    "she",
    "he",
    "than",
    "too",
    "very",
    "much",
    "many",
    "lot",
    "few",
    "little",
    "big",
    "small",
    "fast",
    "slow",
    "broken",
    "fixed",
    "pushed",
    "merged",
    "deployed",
    "failed",
    "passed",
    "running",
    "started",
    "stopped",
    "waiting",
    "ready",
    "soon",
    "asap",
    "minutes",
    "hours",
    "day",
    "days",
    "friday",
    "monday",
    "lunch",
    "coffee",
    "doc",
    "docs",
    "link",
    "page",
    "screen",
    "button",
    "message",
    "email",
    "slack",
    "channel",
    "thread",
    "question",
    "answer",
    "idea",
    "plan",
    "problem",
    "reason",
    "case",
    "point",
    "part",
    "way",
    "thing",
    "things",
    "someone",
    "everyone",
    "anyone",
    "nothing",
    "something",
    "everything",
    "look",
    "find",
    "found",
    "try",
    "tried",
    "use",
    "using",
    "used",
    "want",
    "wanted",
    "say",
    "said",
    "tell",
    "told",
    "ask",
    "asked",
    "give",
    "take",
    "put",
    "keep",
    "help",
    "start",
    "stop",
    "run",
    "open",
    "close",
    "send",
    "sent",
    "read",
    "write",
    "wrote",
    "add",
    "added",
    "remove",
    "removed",
    "move",
    "moved",
    "set",
    "turn",
    "show",
    "shows",
    "seems",
    "feel",
    "mean",
    "means",
    "guess",
    "hope",
    "sorry",
    "cool",
    "awesome",
    "perfect",
    "weird",
    "strange",
    "true",
    "false",
    "null",
    "api",
    "endpoint",
    "database",
    "query",
    "cache",
    "queue",
    "latency",
    "memory",
    "cpu",
    "disk",
    "network",
    "timeout",
    "retry",
    "alert",
    "dashboard",
    "metrics",
    "graph",
    "spike",
    "incident",
    "rollback",
    "hotfix",
    "version",
    "staging",
    "production",
    "prod",
    "local",
    "cluster",
    "node",
    "pod",
    "service",
    "region",
    "backup",
    "migration",
    "schema",
    "token",
    "session",
    "login",
    "password",
    "invoice",
    "order",
    "payment",
    "price",
    "budget",
];

/// One JSON payload of exactly `size` bytes (`size` ≥ [`JSON_MIN`]) for
/// message `seq`, appended to `out`.
pub fn json(out: &mut Vec<u8>, size: usize, seq: u32, rng: &mut Rng) {
    use std::io::Write as _;
    let start = out.len();
    let r = rng.next_u64();
    let ts = 1_700_000_000_000u64 + u64::from(seq) * 250 + (r >> 54);
    write!(
        out,
        "{{\"seq\":{seq},\"type\":\"{}\",\"room\":\"{}\",\"user\":\"{}\",\"ts\":{ts},\"text\":\"",
        TYPES[(r & 3) as usize],
        ROOMS[((r >> 2) % ROOMS.len() as u64) as usize],
        USERS[((r >> 8) % USERS.len() as u64) as usize],
    )
    .expect("writing to a Vec");
    let text_end = start + size - 2;
    let mut first = true;
    while out.len() < text_end {
        // u² skews the draw towards the commonest words.
        let u = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        let word = WORDS[((u * u) * WORDS.len() as f64) as usize];
        if !first {
            if rng.next_u64() % 12 == 0 {
                out.push(b'.');
            }
            out.push(b' ');
        }
        first = false;
        out.extend_from_slice(word.as_bytes());
    }
    out.truncate(text_end);
    if out.last() == Some(&b' ') {
        // No trailing space: end the text with a full stop instead.
        *out.last_mut().expect("non-empty") = b'.';
    }
    out.extend_from_slice(b"\"}");
    debug_assert_eq!(out.len() - start, size);
}

/// Messages built per send: a payload (pattern with the sequence number, or
/// JSON), compressed when deflate was agreed, masked; the payloads in
/// flight are kept to check each echo (inflated) byte for byte.
pub struct Messages {
    payload: Payload,
    size: usize,
    opcode: u8,
    rng: Rng,
    deflater: Option<Deflater>,
    key: [u8; 4],
    pending: VecDeque<Vec<u8>>,
    spare: Vec<Vec<u8>>,
    scratch: Vec<u8>,
}

impl Messages {
    /// `seed`: the connection's number (the same messages for every server).
    /// Frames are text for JSON (and for the pattern with `text`), binary
    /// otherwise.
    pub fn new(
        payload: Payload,
        size: usize,
        text: bool,
        seed: u64,
        deflater: Option<Deflater>,
        rng: &mut Rng,
    ) -> Self {
        let text = text || payload == Payload::Json;
        Messages {
            payload,
            size,
            opcode: if text { OP_TEXT } else { OP_BINARY },
            rng: Rng::seeded(seed),
            deflater,
            key: rng.mask(),
            pending: VecDeque::new(),
            spare: Vec::new(),
            scratch: Vec::new(),
        }
    }
}

/// The pattern payload of [`ws::Tx`]: sequence number in hex, then letters.
fn pattern(out: &mut Vec<u8>, size: usize, seq: u32) {
    let hex = ws::hex8(seq);
    out.extend((0..size).map(|i| {
        if i < 8 {
            if size >= 8 { hex[i] } else { b'0' }
        } else {
            b'a' + (i % 26) as u8
        }
    }));
}

impl Source for Messages {
    fn push(&mut self, out: &mut Vec<u8>, seq: u32) -> usize {
        let mut plain = self.spare.pop().unwrap_or_default();
        plain.clear();
        match self.payload {
            Payload::Pattern => pattern(&mut plain, self.size, seq),
            Payload::Json => json(&mut plain, self.size, seq, &mut self.rng),
        }
        let before = out.len();
        match &mut self.deflater {
            Some(d) => {
                self.scratch.clear();
                d.compress(&plain, &mut self.scratch);
                ws::push_data(out, RSV1 | self.opcode, &self.scratch, self.key);
            }
            None => ws::push_data(out, self.opcode, &plain, self.key),
        }
        self.pending.push_back(plain);
        out.len() - before
    }

    fn verify(&mut self, payload: &[u8], _seq: u32) -> bool {
        match self.pending.pop_front() {
            Some(sent) => {
                let same = sent == payload;
                self.spare.push(sent);
                same
            }
            None => false,
        }
    }

    fn skip(&mut self) {
        if let Some(sent) = self.pending.pop_front() {
            self.spare.push(sent);
        }
    }

    fn size(&self) -> usize {
        self.size
    }

    fn key(&self) -> [u8; 4] {
        self.key
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deflate::{Inflater, parse_answer};

    #[test]
    fn json_payloads_have_the_size_and_differ() {
        let mut rng = Rng::seeded(7);
        let mut seen = std::collections::HashSet::new();
        for seq in 0..50 {
            for size in [JSON_MIN, 1024, 4000] {
                let mut out = Vec::new();
                json(&mut out, size, seq, &mut rng);
                assert_eq!(out.len(), size);
                let text = std::str::from_utf8(&out).unwrap();
                assert!(text.starts_with(&format!("{{\"seq\":{seq},")), "{text}");
                assert!(text.ends_with("\"}") && !text.contains("  "), "{text}");
                assert!(seen.insert(out));
            }
        }
        // Same seed, same messages.
        let (mut a, mut b) = (Vec::new(), Vec::new());
        json(&mut a, 1024, 3, &mut Rng::seeded(9));
        json(&mut b, 1024, 3, &mut Rng::seeded(9));
        assert_eq!(a, b);
    }

    #[test]
    fn compressed_messages_verify_after_inflating() {
        let agreed = parse_answer(
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover",
        )
        .unwrap()
        .unwrap();
        let mut rng = Rng::new();
        let mut m = Messages::new(
            Payload::Json,
            1024,
            false,
            1,
            Some(Deflater::new(&agreed, 6)),
            &mut rng,
        );
        let mut inflater = Inflater::new(&agreed);
        for seq in 0..5 {
            let mut out = Vec::new();
            let n = m.push(&mut out, seq);
            assert_eq!(n, out.len());
            assert_eq!(out[0], 0x80 | RSV1 | OP_TEXT);
            let (len, at) = match out[1] & 0x7f {
                126 => (u16::from_be_bytes([out[2], out[3]]) as usize, 8),
                n => (n as usize, 6),
            };
            assert!(len < 800, "1 KiB of JSON compresses: {len}");
            let key = [out[at - 4], out[at - 3], out[at - 2], out[at - 1]];
            let body: Vec<u8> = out[at..]
                .iter()
                .enumerate()
                .map(|(i, b)| b ^ key[i & 3])
                .collect();
            let plain = inflater.inflate(&body).unwrap().to_vec();
            assert!(m.verify(&plain, seq));
        }
        assert!(!m.verify(b"x", 5), "nothing in flight");
    }
}
