//! Slack request signing (v0): `v0=hex(HMAC-SHA256(secret, "v0:{timestamp}:{raw body}"))`.
//!
//! Verified on the raw body before anything parses it, compared in constant time, and
//! refused when the timestamp is more than five minutes from now (replays).

use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// How far a request's timestamp may be from now.
pub const MAX_SKEW_SECS: i64 = 300;

/// Why a Slack request was refused; the message is safe to return to the caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// `X-Slack-Request-Timestamp` or `X-Slack-Signature` is missing.
    #[error("missing {0} header")]
    Missing(&'static str),
    /// The timestamp is not a number.
    #[error("malformed X-Slack-Request-Timestamp")]
    BadTimestamp,
    /// The timestamp is too old or too far in the future.
    #[error("stale request timestamp")]
    Stale,
    /// The signature does not match.
    #[error("signature mismatch")]
    Mismatch,
}

/// The signature Slack sends for `body` at `timestamp`.
pub fn sign(secret: &str, timestamp: &str, body: &[u8]) -> String {
    let mut mac = hmac(secret);
    mac.update(b"v0:");
    mac.update(timestamp.as_bytes());
    mac.update(b":");
    mac.update(body);
    format!("v0={}", hex::encode(mac.finalize().into_bytes()))
}

fn hmac(secret: &str) -> Hmac<Sha256> {
    // HMAC accepts keys of any length, so this cannot fail.
    match Hmac::<Sha256>::new_from_slice(secret.as_bytes()) {
        Ok(m) => m,
        Err(_) => unreachable!("HMAC takes any key length"),
    }
}

/// Checks a request's headers against its raw body at time `now` (Unix seconds).
pub fn verify(
    secret: &str,
    timestamp: Option<&str>,
    signature: Option<&str>,
    body: &[u8],
    now: i64,
) -> Result<(), SignatureError> {
    let ts = timestamp.ok_or(SignatureError::Missing("X-Slack-Request-Timestamp"))?;
    let sig = signature.ok_or(SignatureError::Missing("X-Slack-Signature"))?;
    let when: i64 = ts
        .trim()
        .parse()
        .map_err(|_| SignatureError::BadTimestamp)?;
    // `abs_diff` cannot overflow, whatever timestamp a caller sends.
    if now.abs_diff(when) > MAX_SKEW_SECS.unsigned_abs() {
        return Err(SignatureError::Stale);
    }
    let expected = sign(secret, ts, body);
    if expected.as_bytes().ct_eq(sig.as_bytes()).into() {
        Ok(())
    } else {
        Err(SignatureError::Mismatch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const NOW: i64 = 1_700_000_000;

    #[test]
    fn slack_documentation_example_verifies() {
        // The worked example from Slack's "Verifying requests from Slack" guide.
        let secret = "8f742231b10e8888abcd99yyyzzz85a5";
        let body = b"token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c";
        assert_eq!(
            sign(secret, "1531420618", body),
            "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503"
        );
    }

    #[test]
    fn missing_stale_and_forged_requests_are_refused() {
        let sig = sign("s", &NOW.to_string(), b"x");
        let ts = NOW.to_string();
        assert_eq!(
            verify("s", None, Some(&sig), b"x", NOW),
            Err(SignatureError::Missing("X-Slack-Request-Timestamp"))
        );
        assert_eq!(
            verify("s", Some(&ts), None, b"x", NOW),
            Err(SignatureError::Missing("X-Slack-Signature"))
        );
        assert_eq!(
            verify("s", Some(&ts), Some(&sig), b"x", NOW + 301),
            Err(SignatureError::Stale)
        );
        assert_eq!(
            verify("t", Some(&ts), Some(&sig), b"x", NOW),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify("s", Some("abc"), Some(&sig), b"x", NOW),
            Err(SignatureError::BadTimestamp)
        );
        assert_eq!(verify("s", Some(&ts), Some(&sig), b"x", NOW + 299), Ok(()));
    }

    proptest! {
        #[test]
        fn sign_then_verify_succeeds_and_any_byte_change_fails(
            body in proptest::collection::vec(any::<u8>(), 0..512),
            secret in "[ -~]{1,64}",
            pos in any::<prop::sample::Index>(),
            flip in 1u8..=255,
        ) {
            let ts = NOW.to_string();
            let sig = sign(&secret, &ts, &body);
            prop_assert_eq!(verify(&secret, Some(&ts), Some(&sig), &body, NOW), Ok(()));
            if !body.is_empty() {
                let mut changed = body.clone();
                let i = pos.index(changed.len());
                changed[i] ^= flip;
                prop_assert_eq!(verify(&secret, Some(&ts), Some(&sig), &changed, NOW), Err(SignatureError::Mismatch));
            }
            let mut bad_sig = sig.clone().into_bytes();
            let i = pos.index(bad_sig.len());
            bad_sig[i] ^= flip & 0x7f | 1;
            if let Ok(bad) = String::from_utf8(bad_sig) {
                prop_assert!(verify(&secret, Some(&ts), Some(&bad), &body, NOW).is_err());
            }
        }
    }

    #[test]
    fn finding_3_hostile_timestamps_are_stale_not_a_panic() {
        let now = 1_800_000_000;
        for ts in [i64::MIN, i64::MAX, i64::MIN + 1, -1, 0] {
            let ts = ts.to_string();
            let sig = sign("s", &ts, b"x");
            assert_eq!(
                verify("s", Some(&ts), Some(&sig), b"x", now),
                Err(SignatureError::Stale),
                "{ts}"
            );
        }
        // And the clock itself at the ends of its range.
        let sig = sign("s", "0", b"x");
        assert_eq!(
            verify("s", Some("0"), Some(&sig), b"x", i64::MAX),
            Err(SignatureError::Stale)
        );
    }

    #[test]
    fn the_window_is_five_minutes_on_both_sides() {
        let now = 1_800_000_000;
        for (offset, ok) in [(-300, true), (300, true), (-301, false), (301, false)] {
            let ts = (now + offset).to_string();
            let sig = sign("s", &ts, b"x");
            assert_eq!(
                verify("s", Some(&ts), Some(&sig), b"x", now).is_ok(),
                ok,
                "{offset}"
            );
        }
    }
}
