//! Shared bits of the baseline servers: `--port` parsing.

/// Port from `--port N` (or `--port=N`), default 8080. The servers listen on
/// 127.0.0.1 only.
pub fn port_from_args() -> u16 {
    let mut args = std::env::args().skip(1);
    let mut port = 8080;
    while let Some(arg) = args.next() {
        let value = if arg == "--port" {
            args.next()
        } else if let Some(v) = arg.strip_prefix("--port=") {
            Some(v.to_owned())
        } else if arg == "-h" || arg == "--help" {
            eprintln!(
                "usage: {} [--port N]   (listens on 127.0.0.1, default port 8080)",
                program()
            );
            std::process::exit(0);
        } else {
            eprintln!("{}: unknown argument {arg:?} (usage: --port N)", program());
            std::process::exit(2);
        };
        port = match value.as_deref().map(str::parse) {
            Some(Ok(p)) => p,
            _ => {
                eprintln!("{}: --port needs a number", program());
                std::process::exit(2);
            }
        };
    }
    port
}

fn program() -> String {
    std::env::args().next().unwrap_or_default()
}
