//! Any combination of the three schemes' headers, query secret and body: verification
//! answers yes or no, never a panic, and never yes for what no key or secret signed.
#![no_main]

use std::sync::OnceLock;

use arbitrary::Arbitrary;
use autofollow::web::auth::{GHL_PUBLIC_KEY_PEM, Verifier, parse_public_keys};
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;
use secrecy::SecretString;

#[derive(Arbitrary, Debug)]
struct Input<'a> {
    /// (header name index, value) pairs; names from the three schemes, plus noise.
    headers: Vec<(u8, &'a str)>,
    query_secret: Option<&'a str>,
    body: &'a [u8],
}

const NAMES: [&str; 7] = [
    "x-ghl-signature",
    "x-webhook-secret",
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
    "x-wh-signature",
    "content-type",
];

/// A `whsec_` secret: its base64 part is the Standard Webhooks HMAC key.
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn verifier() -> &'static Verifier {
    static VERIFIER: OnceLock<Verifier> = OnceLock::new();
    VERIFIER.get_or_init(|| {
        let keys = parse_public_keys(GHL_PUBLIC_KEY_PEM).expect("GoHighLevel's key");
        let secret = SecretString::from(SECRET.to_owned());
        Verifier::new(keys, vec![secret]).expect("verifier")
    })
}

fuzz_target!(|input: Input<'_>| {
    let mut headers = HeaderMap::new();
    for (name, value) in &input.headers {
        let name = HeaderName::from_static(NAMES[usize::from(*name) % NAMES.len()]);
        if let Ok(value) = HeaderValue::from_str(value) {
            headers.append(name, value);
        }
    }
    let app = verifier().app(&headers, input.body);
    let shared = verifier().shared(&headers, input.query_secret, input.body);
    // Nobody holds GoHighLevel's private key, and the secret cannot be guessed from here:
    // a yes needs the secret itself, sent as it is.
    let header_secret = headers
        .get_all("x-webhook-secret")
        .iter()
        .any(|v| v == SECRET);
    let query_secret = input.query_secret == Some(SECRET);
    assert!(app.is_err() || header_secret, "accepted: {input:?}");
    assert!(
        shared.is_err() || header_secret || query_secret,
        "accepted: {input:?}"
    );
});
