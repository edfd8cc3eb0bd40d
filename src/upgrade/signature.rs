//! Shopmonkey's OpenPGP public key, embedded, and the check of a release archive's detached
//! signature against it.
//!
//! Invariant: a release build verifies against the embedded key and nothing else. Only a build
//! with debug assertions (the tests' builds) lets `EDS_UPGRADE_PUBLIC_KEY_FILE` name another key,
//! so the tests can sign archives with a key they generate.

use pgp::composed::{Deserializable, DetachedSignature, SignedPublicKey};
use pgp::packet::SignatureType;
use std::path::{Path, PathBuf};

/// Shopmonkey's public signing key, ASCII-armored, as `eds publickey` prints it.
pub const SHOPMONKEY_PUBLIC_KEY: &str = include_str!("shopmonkey.asc");

/// The environment variable that names another public key (an armored file) to verify against.
/// Honoured only by builds with debug assertions; release builds ignore it.
pub const PUBLIC_KEY_FILE_ENV: &str = "EDS_UPGRADE_PUBLIC_KEY_FILE";

/// Why a key or a signature could not be used.
#[derive(Debug, thiserror::Error)]
pub enum SignatureError {
    /// The key is not an armored OpenPGP public key whose self-signatures hold.
    #[error("the public key {origin} is not a usable OpenPGP public key")]
    Key {
        /// `embedded` or the file the key came from.
        origin: String,
        /// What was wrong with it.
        #[source]
        source: Box<pgp::errors::Error>,
    },
    /// The key file could not be read.
    #[error("reading the public key {path}")]
    KeyFile {
        /// The file named by the environment variable.
        path: PathBuf,
        /// Why it could not be read.
        #[source]
        source: std::io::Error,
    },
    /// The signature's bytes are not an OpenPGP signature (armored or binary).
    #[error("the signature is not an OpenPGP detached signature")]
    Unreadable {
        /// What the parser said.
        #[source]
        source: Box<pgp::errors::Error>,
    },
    /// The signature is not a signature over binary data (type 0x00).
    #[error("the signature is of type {typ}, not a signature over binary data")]
    NotBinary {
        /// The signature's type, as the parser names it.
        typ: String,
    },
    /// No key of the certificate (primary or signing subkey) made this signature over these
    /// bytes.
    #[error("the signature does not verify against the {key_name} key")]
    Mismatch {
        /// `Shopmonkey`, or a description of the test key in use.
        key_name: String,
        /// The last verifier's complaint.
        #[source]
        source: Box<pgp::errors::Error>,
    },
}

/// The public key archives are verified against, with a name for messages.
#[derive(Debug, Clone)]
pub struct ReleaseKey {
    key: SignedPublicKey,
    name: String,
}

impl ReleaseKey {
    /// Shopmonkey's embedded key.
    pub fn shopmonkey() -> Result<ReleaseKey, SignatureError> {
        ReleaseKey::from_armored(SHOPMONKEY_PUBLIC_KEY, "embedded", "Shopmonkey")
    }

    /// The key to verify release archives against: Shopmonkey's, or — in builds with debug
    /// assertions only — the armored key in the file [`PUBLIC_KEY_FILE_ENV`] names. Release
    /// builds never look at that variable: the check below is compiled out of them.
    pub fn for_releases() -> Result<ReleaseKey, SignatureError> {
        #[cfg(debug_assertions)]
        if let Some(path) = std::env::var_os(PUBLIC_KEY_FILE_ENV).filter(|p| !p.is_empty()) {
            let path = PathBuf::from(path);
            tracing::warn!(path = %path.display(), "verifying against a test public key ({PUBLIC_KEY_FILE_ENV}; debug builds only)");
            return ReleaseKey::from_file(&path);
        }
        ReleaseKey::shopmonkey()
    }

    /// The armored key in `path`.
    pub fn from_file(path: &Path) -> Result<ReleaseKey, SignatureError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| SignatureError::KeyFile { path: path.to_owned(), source })?;
        let origin = path.display().to_string();
        ReleaseKey::from_armored(&text, &origin, &format!("test ({origin})"))
    }

    /// An armored public key. Its binding self-signatures must verify, so a damaged or
    /// tampered certificate is refused rather than half-used.
    fn from_armored(text: &str, origin: &str, name: &str) -> Result<ReleaseKey, SignatureError> {
        let key_error = |source| SignatureError::Key { origin: origin.to_owned(), source: Box::new(source) };
        let (key, _headers) = SignedPublicKey::from_string(text).map_err(key_error)?;
        key.verify_bindings().map_err(key_error)?;
        Ok(ReleaseKey { key, name: name.to_owned() })
    }

    /// The key's fingerprint, in hex.
    pub fn fingerprint(&self) -> String {
        use pgp::types::KeyDetails;
        self.key.fingerprint().to_string()
    }

    /// Checks `signature` (a detached OpenPGP signature, armored or binary) over `data`. The
    /// signature must be over binary data (type 0x00: a text signature would let line endings
    /// change) and made by the primary key or a subkey whose binding allows signing.
    pub fn verify(&self, data: &[u8], signature: &[u8]) -> Result<(), SignatureError> {
        let signature = parse_detached(signature)?;
        match signature.signature.typ() {
            Some(SignatureType::Binary) => {}
            other => return Err(SignatureError::NotBinary { typ: format!("{other:?}") }),
        }
        let mismatch = |source| SignatureError::Mismatch { key_name: self.name.clone(), source: Box::new(source) };
        let mut last = match signature.verify(&self.key, data) {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        let signing_subkeys =
            self.key.public_subkeys.iter().filter(|sub| sub.signatures.iter().any(|s| s.key_flags().sign()));
        for subkey in signing_subkeys {
            match signature.verify(subkey, data) {
                Ok(()) => return Ok(()),
                Err(e) => last = e,
            }
        }
        Err(mismatch(last))
    }
}

/// A detached signature, ASCII-armored (`-----BEGIN PGP SIGNATURE-----`) or binary.
fn parse_detached(bytes: &[u8]) -> Result<DetachedSignature, SignatureError> {
    let unreadable = |source| SignatureError::Unreadable { source: Box::new(source) };
    let start = bytes.iter().position(|b| !b.is_ascii_whitespace()).unwrap_or(bytes.len());
    if bytes.get(start..).is_some_and(|rest| rest.starts_with(b"-----BEGIN")) {
        DetachedSignature::from_armor_single(bytes).map(|(sig, _headers)| sig).map_err(unreadable)
    } else {
        DetachedSignature::from_bytes(bytes).map_err(unreadable)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use pgp::composed::{ArmorOptions, KeyType, SecretKeyParamsBuilder, SignedSecretKey};
    use pgp::crypto::hash::HashAlgorithm;
    use pgp::types::Password;

    /// A fresh Ed25519 key pair that can sign, as the tests' stand-in for Shopmonkey's.
    pub(crate) fn test_key(user: &str) -> SignedSecretKey {
        let mut params = SecretKeyParamsBuilder::default();
        params.key_type(KeyType::Ed25519Legacy).can_certify(true).can_sign(true).primary_user_id(user.into());
        params.build().unwrap().generate(rand::thread_rng()).unwrap()
    }

    /// `secret`'s armored detached signature over `data`.
    pub(crate) fn sign(secret: &SignedSecretKey, data: &[u8]) -> Vec<u8> {
        let sig = DetachedSignature::sign_binary_data(
            rand::thread_rng(),
            &secret.primary_key,
            &Password::empty(),
            HashAlgorithm::Sha256,
            data,
        )
        .unwrap();
        sig.to_armored_bytes(ArmorOptions::default()).unwrap()
    }

    fn public(secret: &SignedSecretKey, name: &str) -> ReleaseKey {
        let armored = secret.to_public_key().to_armored_string(ArmorOptions::default()).unwrap();
        ReleaseKey::from_armored(&armored, "test", name).unwrap()
    }

    #[test]
    fn the_embedded_key_parses_and_its_self_signatures_hold() {
        let key = ReleaseKey::shopmonkey().unwrap();
        assert_eq!(key.fingerprint().to_uppercase(), "C9946E99DD655505AD5FE9D2FECFF4915E7BF492");
        assert!(SHOPMONKEY_PUBLIC_KEY.starts_with("-----BEGIN PGP PUBLIC KEY BLOCK-----\n"));
        assert!(SHOPMONKEY_PUBLIC_KEY.trim_end().ends_with("-----END PGP PUBLIC KEY BLOCK-----"));
    }

    #[test]
    fn a_damaged_key_is_refused() {
        let damaged = SHOPMONKEY_PUBLIC_KEY.replacen("mDMEZqbX1BYJ", "mDMEZqbX1BYK", 1);
        assert!(ReleaseKey::from_armored(&damaged, "damaged", "x").is_err());
        assert!(ReleaseKey::from_armored("not a key", "junk", "x").is_err());
    }

    #[test]
    fn a_signature_verifies_only_over_its_bytes_and_by_its_key() {
        let secret = test_key("Release <release@example.com>");
        let key = public(&secret, "release");
        let data = b"archive bytes".repeat(1000);
        let armored = sign(&secret, &data);
        key.verify(&data, &armored).unwrap();

        // The same signature in binary form.
        let binary = DetachedSignature::from_armor_single(&armored[..]).unwrap().0;
        let mut raw = Vec::new();
        pgp::ser::Serialize::to_writer(&binary, &mut raw).unwrap();
        key.verify(&data, &raw).unwrap();

        let mut tampered = data.clone();
        tampered[10] ^= 1;
        let e = key.verify(&tampered, &armored).unwrap_err();
        assert!(matches!(e, SignatureError::Mismatch { .. }), "{e:?}");
        assert_eq!(e.to_string(), "the signature does not verify against the release key");

        let other = sign(&test_key("Other <other@example.com>"), &data);
        assert!(matches!(key.verify(&data, &other).unwrap_err(), SignatureError::Mismatch { .. }));
        assert!(matches!(key.verify(&data, b"garbage").unwrap_err(), SignatureError::Unreadable { .. }));
        let e = ReleaseKey::shopmonkey().unwrap().verify(&data, &armored).unwrap_err();
        assert_eq!(e.to_string(), "the signature does not verify against the Shopmonkey key");
    }
}
