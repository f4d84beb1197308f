//! Text forms people copy by hand: bech32m (BIP-350) with a human-readable prefix.
//!
//! bech32m's BCH checksum detects *every* error that touches up to four characters of a string of
//! up to 89 characters, so every single-character typo (and every swap of two characters) in a
//! `NodeId` is rejected, not merely rejected with high probability as a truncated hash would be.
//! Longer strings (tickets with many addresses) keep a 30-bit checksum.

use bech32::primitives::decode::{
    CharError, CheckedHrpstring, CheckedHrpstringError, ChecksumError, UncheckedHrpstringError,
};
use bech32::{Bech32m, Hrp};

/// Why a checked text string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CheckedTextError {
    /// The string does not start with the expected prefix and separator.
    #[error("expected text starting with \"{expected}1\", found \"{found}\"")]
    WrongPrefix {
        /// The prefix this kind of string must carry.
        expected: &'static str,
        /// The start of the string that was given.
        found: String,
    },
    /// A character outside the bech32 alphabet (or a mix of upper and lower case).
    #[error("invalid character {0:?} (allowed: a-z and 0-9 except 1, b, i and o)")]
    InvalidCharacter(char),
    /// Upper and lower case letters are mixed.
    #[error("mixed upper and lower case")]
    MixedCase,
    /// The checksum does not match: the text was mistyped or truncated.
    #[error("checksum mismatch: the text was mistyped or cut short")]
    ChecksumMismatch,
    /// The text is far too long or too short to be valid.
    #[error("wrong length ({0} characters)")]
    WrongLength(usize),
}

/// Encodes `data` as lowercase bech32m text behind `prefix`.
///
/// `prefix` must be a valid bech32 human-readable part; all callers pass constants.
pub fn encode(prefix: &'static str, data: &[u8]) -> String {
    let hrp = Hrp::parse_unchecked(prefix);
    // Encoding only fails past bech32m's 1023-character code length; callers bound their data
    // far below that (see `MAX_DATA_LEN`).
    bech32::encode::<Bech32m>(hrp, data).unwrap_or_default()
}

/// Largest payload [`encode`] accepts: 1023 characters minus prefix, separator and checksum,
/// times five bits per character.
pub const MAX_DATA_LEN: usize = 600;

/// Decodes bech32m text that must carry `prefix`, returning the payload bytes.
pub fn decode(prefix: &'static str, text: &str) -> Result<Vec<u8>, CheckedTextError> {
    let text = text.trim();
    // Check the prefix first so that a ticket pasted where a node id belongs says so.
    let sep = text.rfind('1');
    let found_prefix = sep.map(|i| &text[..i]).unwrap_or("");
    if !found_prefix.eq_ignore_ascii_case(prefix) {
        let found: String = text.chars().take(prefix.len() + 4).collect();
        return Err(CheckedTextError::WrongPrefix {
            expected: prefix,
            found,
        });
    }
    if text.len() > 1023 {
        return Err(CheckedTextError::WrongLength(text.len()));
    }
    let checked = CheckedHrpstring::new::<Bech32m>(text).map_err(|e| map_error(e, text))?;
    Ok(checked.byte_iter().collect())
}

fn map_error(error: CheckedHrpstringError, text: &str) -> CheckedTextError {
    match error {
        CheckedHrpstringError::Parse(UncheckedHrpstringError::Char(c)) => match c {
            CharError::InvalidChar(ch) => CheckedTextError::InvalidCharacter(ch),
            CharError::MixedCase => CheckedTextError::MixedCase,
            _ => CheckedTextError::WrongLength(text.len()),
        },
        CheckedHrpstringError::Checksum(ChecksumError::InvalidResidue) => {
            CheckedTextError::ChecksumMismatch
        }
        _ => CheckedTextError::WrongLength(text.len()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_fixture() {
        let text = encode("kw", &[0u8; 4]);
        // Checked against the BIP-350 reference encoder.
        assert_eq!(text, "kw1qqqqqqqwcwe2v");
        assert_eq!(decode("kw", &text).unwrap(), vec![0u8; 4]);
        assert_eq!(decode("kw", &text.to_uppercase()).unwrap(), vec![0u8; 4]);
    }

    #[test]
    fn errors_are_specific() {
        let text = encode("kw", &[1, 2, 3, 4, 5]);
        assert!(matches!(
            decode("kwt", &text),
            Err(CheckedTextError::WrongPrefix { .. })
        ));
        let mut typo = text.clone().into_bytes();
        let last = typo.len() - 1;
        typo[last] = if typo[last] == b'q' { b'p' } else { b'q' };
        let typo = String::from_utf8(typo).unwrap();
        assert_eq!(decode("kw", &typo), Err(CheckedTextError::ChecksumMismatch));
        let bad = format!("{}b", &text[..text.len() - 1]);
        assert_eq!(
            decode("kw", &bad),
            Err(CheckedTextError::InvalidCharacter('b'))
        );
        assert!(decode("kw", "").is_err());
        assert!(decode("kw", "kw1").is_err());
    }
}
