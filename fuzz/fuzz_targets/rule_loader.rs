//! Any rule file: it loads or is refused with diagnostics, never a panic.
#![no_main]

use autofollow::rules::RuleSet;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    let _ = RuleSet::from_sources(&[("fuzz.yaml", text)]);
    // The same text after a users file, as the second of two files.
    let _ = RuleSet::from_sources(&[
        (
            "00-users.yaml",
            "version: 1\nusers:\n  alice: 9hTnVvSr1Q2ZyE5kHfXm\n",
        ),
        ("10-fuzz.yaml", text),
    ]);
});
