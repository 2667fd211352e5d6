//! Logging: `tracing` to standard error, human-readable or JSON, filtered by `RUST_LOG`; and
//! [`untrusted`], the one way a string a request sent reaches a log field.

use tracing_subscriber::EnvFilter;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Pretty,
    Json,
}

pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // A second initialization (tests) keeps the first subscriber.
    let _ = match format {
        LogFormat::Pretty => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// The most characters of a request's string that a log line shows.
pub const UNTRUSTED_CHARS: usize = 64;

/// A string a request sent, for a log field: log it with `?` (Debug), which quotes it and
/// escapes control characters, so it can neither split a line nor forge one; cut to
/// [`UNTRUSTED_CHARS`] characters (`…` marks the cut).
pub fn untrusted(text: &str) -> Untrusted<'_> {
    match text.char_indices().nth(UNTRUSTED_CHARS) {
        Some((end, _)) => Untrusted(&text[..end], true),
        None => Untrusted(text, false),
    }
}

/// See [`untrusted`].
pub struct Untrusted<'a>(&'a str, bool);

impl std::fmt::Debug for Untrusted<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.0, f)?;
        if self.1 {
            f.write_str("…")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn untrusted_text_is_escaped_and_cut() {
        assert_eq!(format!("{:?}", untrusted("Evil\nType")), r#""Evil\nType""#);
        let long = "é".repeat(100);
        let shown = format!("{:?}", untrusted(&long));
        assert_eq!(shown, format!("\"{}\"…", "é".repeat(UNTRUSTED_CHARS)));
        assert_eq!(format!("{:?}", untrusted("\u{1b}[31m")), r#""\u{1b}[31m""#);
    }
}
