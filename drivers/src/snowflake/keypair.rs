//! Key-pair authentication: the JWT Snowflake's `SNOWFLAKE_JWT` authenticator takes.
//!
//! The token is an RS256 JWT whose issuer is `<ACCOUNT>.<USER>.SHA256:<fingerprint>` and whose
//! subject is `<ACCOUNT>.<USER>` (both upper case), where the fingerprint is the standard base64
//! of the SHA-256 of the public key's DER `SubjectPublicKeyInfo` — the value Snowflake shows as
//! `RSA_PUBLIC_KEY_FP` for the user. The key is an unencrypted PKCS#8 RSA key in PEM; ring signs
//! (already in the build for TLS), so no further crypto crate is needed.

use crate::driver::{DriverError, ErrorClass};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use ring::signature::{RsaKeyPair, RSA_PKCS1_SHA256};

/// How long a token is valid (Snowflake accepts at most one hour).
pub const TOKEN_LIFETIME_SECS: u64 = 59 * 60;

/// An RSA private key ready to sign login tokens.
pub struct PrivateKey {
    pair: RsaKeyPair,
    spki: Vec<u8>,
}

impl std::fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PrivateKey(SHA256:{})", self.fingerprint())
    }
}

fn key_error(problem: impl std::fmt::Display) -> DriverError {
    DriverError::new(ErrorClass::Config, format!("Snowflake key pair: {problem}"))
}

/// A DER length.
fn der_len(out: &mut Vec<u8>, len: usize) {
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
}

fn der(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    der_len(&mut out, body.len());
    out.extend_from_slice(body);
    out
}

/// `SubjectPublicKeyInfo` of an RSA key from its PKCS#1 `RSAPublicKey` DER (what ring exposes):
/// `SEQUENCE { SEQUENCE { OID rsaEncryption, NULL }, BIT STRING { 0 unused bits, RSAPublicKey } }`.
pub fn spki_of_rsa_public_key(pkcs1: &[u8]) -> Vec<u8> {
    const RSA_ALGORITHM: &[u8] =
        &[0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00];
    let mut bits = vec![0u8];
    bits.extend_from_slice(pkcs1);
    let mut body = RSA_ALGORITHM.to_vec();
    body.extend(der(0x03, &bits));
    der(0x30, &body)
}

/// The DER inside a PEM block labelled `PRIVATE KEY`.
fn pem_pkcs8(pem: &str) -> Result<Vec<u8>, DriverError> {
    let text = pem.trim();
    if text.contains("ENCRYPTED PRIVATE KEY") {
        return Err(key_error(
            "the private key is encrypted; eds takes an unencrypted PKCS#8 key (openssl pkcs8 -topk8 -nocrypt)",
        ));
    }
    if text.contains("BEGIN RSA PRIVATE KEY") {
        return Err(key_error(
            "the private key is PKCS#1 (BEGIN RSA PRIVATE KEY); convert it to PKCS#8 with openssl pkcs8 -topk8 -nocrypt",
        ));
    }
    let begin = "-----BEGIN PRIVATE KEY-----";
    let end = "-----END PRIVATE KEY-----";
    let (Some(b), Some(e)) = (text.find(begin), text.find(end)) else {
        return Err(key_error(
            "the value is not a PEM private key (-----BEGIN PRIVATE KEY----- … -----END PRIVATE KEY-----)",
        ));
    };
    let body: String = text.get(b + begin.len()..e).unwrap_or("").chars().filter(|c| !c.is_whitespace()).collect();
    STANDARD.decode(body).map_err(|e| key_error(format!("the PEM body is not base64 ({e})")))
}

impl PrivateKey {
    /// The key from PEM text: an unencrypted PKCS#8 RSA key (2048 to 4096 bits).
    pub fn from_pem(pem: &str) -> Result<PrivateKey, DriverError> {
        let der = pem_pkcs8(pem)?;
        let pair = RsaKeyPair::from_pkcs8(&der)
            .map_err(|e| key_error(format!("the PKCS#8 key is not a usable RSA key ({e})")))?;
        let spki = spki_of_rsa_public_key(pair.public().as_ref());
        Ok(PrivateKey { pair, spki })
    }

    /// The public key's DER `SubjectPublicKeyInfo`.
    pub fn public_key_der(&self) -> &[u8] {
        &self.spki
    }

    /// Base64 of the SHA-256 of the public key (Snowflake's `RSA_PUBLIC_KEY_FP` without `SHA256:`).
    pub fn fingerprint(&self) -> String {
        STANDARD.encode(ring::digest::digest(&ring::digest::SHA256, &self.spki))
    }

    /// The login token for `account` and `user` issued at `now` (seconds since the epoch).
    pub fn jwt(&self, account: &str, user: &str, now: u64) -> Result<String, DriverError> {
        let subject = format!("{}.{}", account.to_ascii_uppercase(), user.to_ascii_uppercase());
        let header = serde_json::json!({"alg": "RS256", "typ": "JWT"});
        let claims = serde_json::json!({
            "iss": format!("{subject}.SHA256:{}", self.fingerprint()),
            "sub": subject,
            "iat": now,
            "exp": now + TOKEN_LIFETIME_SECS,
        });
        let signing_input =
            format!("{}.{}", URL_SAFE_NO_PAD.encode(header.to_string()), URL_SAFE_NO_PAD.encode(claims.to_string()));
        let mut signature = vec![0u8; self.pair.public().modulus_len()];
        self.pair
            .sign(&RSA_PKCS1_SHA256, &ring::rand::SystemRandom::new(), signing_input.as_bytes(), &mut signature)
            .map_err(|_| key_error("signing the login token failed"))?;
        Ok(format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(signature)))
    }
}
