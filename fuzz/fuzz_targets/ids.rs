//! Fuzz target `ids`: every way the library turns text into a [`JobId`].
//!
//! The id parser is the gate in front of every path the store builds (job directories, lease
//! names, index entries), so it must never panic and must accept only the canonical text of a
//! UUID v7. For any input:
//!
//! - `str::parse::<JobId>()` on the input (as UTF-8, lossily converted if it is not) never panics;
//! - an accepted id is 36 characters, prints back as exactly the input, re-parses to the same id,
//!   is version 7 (character 14 is `7`), and holds only lowercase hex digits and hyphens in the
//!   `8-4-4-4-12` positions (so it can never name `..`, `/` or NUL);
//! - `serde_json` decoding of the input as a `JobId` (the path used by `job.json` and lease
//!   records) never panics, and agrees with `FromStr` when the input is a JSON string.

#![no_main]

use jobdir::JobId;
use libfuzzer_sys::fuzz_target;

fn check(text: &str) {
    let Ok(id) = text.parse::<JobId>() else {
        return;
    };
    let shown = id.to_string();
    assert_eq!(shown, text, "an accepted id must print back as its text");
    assert_eq!(shown.len(), 36, "an accepted id must be 36 characters");
    assert_eq!(shown.parse::<JobId>().ok(), Some(id), "round trip");
    for (i, b) in shown.bytes().enumerate() {
        if matches!(i, 8 | 13 | 18 | 23) {
            assert_eq!(b, b'-', "hyphen at {i} in {shown:?}");
        } else {
            assert!(
                b.is_ascii_digit() || (b'a'..=b'f').contains(&b),
                "not lowercase hex at {i} in {shown:?}"
            );
        }
    }
    assert_eq!(
        shown.as_bytes()[14],
        b'7',
        "only UUID v7 may be accepted: {shown:?}"
    );
    // The time part is the first 48 bits: characters 0-7 and 9-12.
    let ms_hex = format!("{}{}", &shown[0..8], &shown[9..13]);
    assert_eq!(
        u64::from_str_radix(&ms_hex, 16).ok(),
        Some(id.unix_millis())
    );
}

fuzz_target!(|data: &[u8]| {
    match std::str::from_utf8(data) {
        Ok(s) => check(s),
        Err(_) => check(&String::from_utf8_lossy(data)),
    }

    // The serde path (job.json's and lease records' "id"/"job" fields).
    let via_json = serde_json::from_slice::<JobId>(data);
    if let Ok(serde_json::Value::String(s)) = serde_json::from_slice::<serde_json::Value>(data) {
        assert_eq!(
            via_json.as_ref().ok(),
            s.parse::<JobId>().ok().as_ref(),
            "serde and FromStr disagree on {s:?}"
        );
    } else if let Ok(id) = via_json {
        panic!("serde accepted {id:?} from a document that is not a JSON string");
    }
});
