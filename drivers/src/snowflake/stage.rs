//! Uploading a file to a Snowflake stage, as the official connectors do it for `PUT`.
//!
//! `PUT 'file:///<name>' @<stage> …` is not run by the server: it answers with an upload command
//! (`data.command = "UPLOAD"`) naming where the stage keeps its files (`stageInfo`: the cloud
//! storage, its location and credentials) and, for an internal stage, the key material the
//! file must be encrypted with (`encryptionMaterial`). The client then writes the file there
//! itself. This module reads that answer ([`UploadCommand::of`]), encrypts as the connectors do
//! ([`encrypt`]: AES-CBC under a random file key, the key wrapped with AES-ECB under the stage's
//! master key, PKCS#7 padding), and uploads to Google Cloud Storage — through the presigned URL
//! the server gives for a single-file `PUT`, or the stage's bucket with its access token — with
//! the connectors' metadata headers (`sfc-digest`: base64 SHA-256 of the file as uploaded before
//! encryption; `encryptiondata` and `matdesc` for an encrypted file).
//!
//! S3: a single `PUT` to the bucket (virtual-hosted: `https://<bucket>.s3[.<region>].amazonaws.com`,
//! or `<bucket>.<endPoint>`), signed with AWS Signature Version 4 under the stage's temporary
//! credentials (`UNSIGNED-PAYLOAD`, as the connectors sign it), the metadata `x-amz-meta-sfc-digest`
//! and, encrypted, `x-amz-meta-x-amz-key`, `-x-amz-iv` and `-x-amz-matdesc`.
//!
//! Azure: a single `PUT` of a block blob to `https://<account>.blob.<endpoint>/<container>/<path>`
//! with the stage's SAS token, the metadata `x-ms-meta-sfcdigest` and, encrypted,
//! `x-ms-meta-encryptiondata` and `x-ms-meta-matdesc`.
//!
//! A stage on another storage (a local file system: [`Location::Other`]) is not written here: the
//! caller takes another way for those rows.
//!
//! Invariant: credentials and keys never appear in a message.

use crate::driver::{DriverError, ErrorClass};
use aes::cipher::{BlockEncrypt, KeyInit};
use base64::Engine as _;
use serde_json::{json, Value};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// AES's block size.
const BLOCK: usize = 16;

/// The key material of an internal stage's upload.
#[derive(Clone, PartialEq, Eq)]
pub struct Material {
    /// The stage's master key (16, 24 or 32 bytes).
    pub master_key: Vec<u8>,
    /// The query id of the `PUT`.
    pub query_id: String,
    /// The master key's id.
    pub smk_id: String,
}

impl std::fmt::Debug for Material {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Material").field("query_id", &self.query_id).field("smk_id", &self.smk_id).finish()
    }
}

/// Where the stage keeps its files.
#[derive(Clone, PartialEq, Eq)]
pub enum Location {
    /// Google Cloud Storage: a presigned URL for the one file, or the bucket path and a bearer
    /// token.
    Gcs {
        /// `stageInfo.presignedUrl`, when given.
        presigned_url: Option<String>,
        /// `stageInfo.location`: `bucket/path/`.
        location: String,
        /// `stageInfo.endPoint`, when given.
        endpoint: Option<String>,
        /// `stageInfo.creds.GCS_ACCESS_TOKEN`, when given.
        token: Option<String>,
    },
    /// Amazon S3: `bucket/path/`, the bucket's region and the stage's temporary credentials.
    S3 {
        /// `stageInfo.location`: `bucket/path/`.
        location: String,
        /// `stageInfo.region`.
        region: String,
        /// `stageInfo.endPoint`, when given (a FIPS endpoint, say): the bucket's host is
        /// `<bucket>.<endPoint>`.
        endpoint: Option<String>,
        /// `stageInfo.useS3RegionalUrl` (or `useRegionalUrl`).
        regional: bool,
        /// `creds.AWS_KEY_ID`, `creds.AWS_SECRET_KEY`, `creds.AWS_TOKEN`.
        key_id: String,
        secret: String,
        token: Option<String>,
    },
    /// Azure Blob Storage: `container/path/`, the storage account, the endpoint's suffix and a
    /// SAS token.
    Azure {
        /// `stageInfo.location`: `container/path/`.
        location: String,
        /// `stageInfo.storageAccount`.
        account: String,
        /// `stageInfo.endPoint` without a leading `blob.` (`core.windows.net`).
        endpoint: String,
        /// `creds.AZURE_SAS_TOKEN`, without a leading `?`.
        sas: String,
    },
    /// Another storage (a local file system): its `locationType`.
    Other(String),
}

impl std::fmt::Debug for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::Gcs { location, endpoint, presigned_url, token } => f
                .debug_struct("Gcs")
                .field("location", location)
                .field("endpoint", endpoint)
                .field("presigned", &presigned_url.is_some())
                .field("token", &token.is_some())
                .finish(),
            Location::S3 { location, region, endpoint, regional, key_id, .. } => f
                .debug_struct("S3")
                .field("location", location)
                .field("region", region)
                .field("endpoint", endpoint)
                .field("regional", regional)
                .field("key_id", key_id)
                .finish_non_exhaustive(),
            Location::Azure { location, account, endpoint, .. } => f
                .debug_struct("Azure")
                .field("location", location)
                .field("account", account)
                .field("endpoint", endpoint)
                .finish_non_exhaustive(),
            Location::Other(kind) => f.debug_tuple("Other").field(kind).finish(),
        }
    }
}

/// The server's answer to a `PUT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadCommand {
    /// Where to write.
    pub location: Location,
    /// How to encrypt; `None`: the stage takes files as they are.
    pub material: Option<Material>,
}

fn malformed(what: &str) -> DriverError {
    DriverError::new(ErrorClass::Unknown, format!("Snowflake: the answer to PUT {what}"))
}

impl UploadCommand {
    /// Reads the `data` of the server's answer to a `PUT`.
    pub fn of(data: &Value) -> Result<UploadCommand, DriverError> {
        match data["command"].as_str() {
            Some(c) if c.eq_ignore_ascii_case("UPLOAD") => {}
            Some(c) => return Err(malformed(&format!("is a {c:?} command, not an upload"))),
            None => return Err(malformed("has no upload command")),
        }
        let info = &data["stageInfo"];
        let kind = info["locationType"].as_str().ok_or_else(|| malformed("names no stage location type"))?;
        let text = |v: &Value| v.as_str().filter(|s| !s.is_empty()).map(str::to_owned);
        let location = if kind.eq_ignore_ascii_case("GCS") {
            Location::Gcs {
                presigned_url: text(&info["presignedUrl"]),
                location: text(&info["location"]).unwrap_or_default(),
                endpoint: text(&info["endPoint"]),
                token: text(&info["creds"]["GCS_ACCESS_TOKEN"]),
            }
        } else if kind.eq_ignore_ascii_case("S3") {
            let creds = &info["creds"];
            let flag = |name: &str| info[name].as_bool().unwrap_or(false);
            Location::S3 {
                location: text(&info["location"]).unwrap_or_default(),
                region: text(&info["region"]).ok_or_else(|| malformed("names an S3 stage without a region"))?,
                endpoint: text(&info["endPoint"]),
                regional: flag("useS3RegionalUrl") || flag("useRegionalUrl"),
                key_id: text(&creds["AWS_KEY_ID"]).ok_or_else(|| malformed("gives no AWS key for the S3 stage"))?,
                secret: text(&creds["AWS_SECRET_KEY"])
                    .ok_or_else(|| malformed("gives no AWS secret for the S3 stage"))?,
                token: text(&creds["AWS_TOKEN"]),
            }
        } else if kind.eq_ignore_ascii_case("AZURE") {
            let endpoint =
                text(&info["endPoint"]).ok_or_else(|| malformed("names an Azure stage without an endpoint"))?;
            Location::Azure {
                location: text(&info["location"]).unwrap_or_default(),
                account: text(&info["storageAccount"])
                    .ok_or_else(|| malformed("names an Azure stage without a storage account"))?,
                endpoint: endpoint.strip_prefix("blob.").unwrap_or(&endpoint).to_owned(),
                sas: text(&info["creds"]["AZURE_SAS_TOKEN"])
                    .map(|t| t.trim_start_matches('?').to_owned())
                    .ok_or_else(|| malformed("gives no SAS token for the Azure stage"))?,
            }
        } else {
            Location::Other(kind.to_owned())
        };
        // One material for a single-file PUT; a list (one per file) for several.
        let material = match &data["encryptionMaterial"] {
            Value::Null => None,
            Value::Array(list) => list.first().map(material_of).transpose()?,
            m => Some(material_of(m)?),
        };
        Ok(UploadCommand { location, material })
    }
}

fn material_of(m: &Value) -> Result<Material, DriverError> {
    let key = m["queryStageMasterKey"].as_str().ok_or_else(|| malformed("has encryption material without a key"))?;
    let master_key = B64.decode(key).map_err(|_| malformed("has a master key that is not base64"))?;
    if ![16, 24, 32].contains(&master_key.len()) {
        return Err(malformed(&format!("has a {}-byte master key (AES takes 16, 24 or 32)", master_key.len())));
    }
    let id = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        _ => String::new(),
    };
    Ok(Material { master_key, query_id: id(&m["queryId"]), smk_id: id(&m["smkId"]) })
}

/// What an encrypted file's reader needs besides the master key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// The file key wrapped under the master key, base64.
    pub key: String,
    /// The initialisation vector, base64.
    pub iv: String,
    /// `{"queryId":…,"smkId":…,"keySize":…}`.
    pub matdesc: String,
}

fn random(n: usize) -> Result<Vec<u8>, DriverError> {
    use ring::rand::SecureRandom;
    let mut b = vec![0u8; n];
    ring::rand::SystemRandom::new()
        .fill(&mut b)
        .map_err(|_| DriverError::new(ErrorClass::Transient, "Snowflake: the system's random source failed"))?;
    Ok(b)
}

/// `data` padded to whole blocks (PKCS#7: always at least one byte of padding).
fn pad(data: &[u8]) -> Vec<u8> {
    let n = BLOCK - data.len() % BLOCK;
    let mut out = Vec::with_capacity(data.len() + n);
    out.extend_from_slice(data);
    out.extend(std::iter::repeat_n(n as u8, n));
    out
}

/// AES in CBC mode over whole blocks (`iv`: `None` for ECB).
fn blocks<C: BlockEncrypt + KeyInit>(key: &[u8], iv: Option<&[u8]>, data: &mut [u8]) {
    let cipher = C::new_from_slice(key).expect("the key length was checked");
    let mut prev = [0u8; BLOCK];
    if let Some(iv) = iv {
        prev.copy_from_slice(iv);
    }
    for block in data.chunks_exact_mut(BLOCK) {
        if iv.is_some() {
            block.iter_mut().zip(prev).for_each(|(b, p)| *b ^= p);
        }
        cipher.encrypt_block(aes::cipher::generic_array::GenericArray::from_mut_slice(block));
        prev.copy_from_slice(block);
    }
}

fn aes(key: &[u8], iv: Option<&[u8]>, data: &mut [u8]) {
    match key.len() {
        16 => blocks::<aes::Aes128>(key, iv, data),
        24 => blocks::<aes::Aes192>(key, iv, data),
        _ => blocks::<aes::Aes256>(key, iv, data),
    }
}

/// `plain` encrypted for a stage with `material`, with what its reader needs to decrypt it.
pub fn encrypt(material: &Material, plain: &[u8]) -> Result<(Vec<u8>, Envelope), DriverError> {
    Ok(encrypt_with(material, plain, &random(material.master_key.len())?, &random(BLOCK)?))
}

fn encrypt_with(material: &Material, plain: &[u8], file_key: &[u8], iv: &[u8]) -> (Vec<u8>, Envelope) {
    let mut body = pad(plain);
    aes(file_key, Some(iv), &mut body);
    let mut wrapped = pad(file_key);
    aes(&material.master_key, None, &mut wrapped);
    // In the connectors' order.
    let text = |s: &str| Value::String(s.to_owned()).to_string();
    let matdesc = format!(
        r#"{{"queryId":{},"smkId":{},"keySize":{}}}"#,
        text(&material.query_id),
        text(&material.smk_id),
        text(&(material.master_key.len() * 8).to_string())
    );
    (body, Envelope { key: B64.encode(wrapped), iv: B64.encode(iv), matdesc })
}

/// Base64 of the SHA-256 of `data` (the `sfc-digest` metadata).
pub fn digest(data: &[u8]) -> String {
    B64.encode(ring::digest::digest(&ring::digest::SHA256, data))
}

/// `s` percent-encoded as a URL path (`/` kept).
fn path_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'/' | b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A stage location `bucket/path` split as the connectors split it: the bucket (or container) and
/// the path, which ends in `/` unless empty.
fn split_location(location: &str) -> (&str, String) {
    match location.split_once('/') {
        Some((b, p)) if !p.is_empty() && !p.ends_with('/') => (b, format!("{p}/")),
        Some((b, p)) => (b, p.to_owned()),
        None => (location, String::new()),
    }
}

/// The URL and bearer token that upload `file` to a GCS stage.
fn gcs_url(location: &Location, file: &str) -> Result<(String, Option<String>), DriverError> {
    let Location::Gcs { presigned_url, location, endpoint, token } = location else {
        return Err(malformed("names a storage eds does not upload to"));
    };
    if let Some(url) = presigned_url {
        return Ok((url.clone(), None));
    }
    let Some(token) = token else {
        return Err(malformed("gives neither a presigned URL nor an access token for the stage"));
    };
    let (bucket, path) = split_location(location);
    let base = match endpoint {
        Some(e) if e.starts_with("https://") => e.trim_end_matches('/').to_owned(),
        Some(e) => format!("https://{}", e.trim_end_matches('/')),
        None => "https://storage.googleapis.com".to_owned(),
    };
    Ok((format!("{base}/{bucket}/{}", path_escape(&format!("{path}{file}"))), Some(token.clone())))
}

/// Uploads `data` (the file as it is to be loaded: gzipped) as `file` where `command` says.
pub async fn upload(
    http: &reqwest::Client,
    command: &UploadCommand,
    file: &str,
    data: Vec<u8>,
) -> Result<(), DriverError> {
    let digest = digest(&data);
    let (body, envelope) = match &command.material {
        None => (data, None),
        Some(material) => {
            let (body, envelope) = encrypt(material, &data)?;
            (body, Some(envelope))
        }
    };
    let req = match &command.location {
        Location::Gcs { .. } => gcs_request(http, &command.location, file, &digest, envelope.as_ref())?,
        Location::S3 { .. } => {
            let url = s3_url(&command.location, file)?;
            s3_request(http, &command.location, &url, &digest, envelope.as_ref(), &amz_date())?
        }
        Location::Azure { .. } => azure_request(http, &command.location, file, &digest, envelope.as_ref())?,
        Location::Other(_) => return Err(malformed("names a storage eds does not upload to")),
    };
    send(req.body(body), file).await
}

/// `{"EncryptionMode":"FullBlob",…}`: an encrypted file's envelope as the GCS and Azure metadata
/// carry it (`algorithm`: the agent's, as each connector names it).
fn encryption_data(envelope: &Envelope, algorithm: &str) -> String {
    json!({
        "EncryptionMode": "FullBlob",
        "WrappedContentKey": {"KeyId": "symmKey1", "EncryptedKey": envelope.key, "Algorithm": "AES_CBC_256"},
        "EncryptionAgent": {"Protocol": "1.0", "EncryptionAlgorithm": algorithm},
        "ContentEncryptionIV": envelope.iv,
        "KeyWrappingMetadata": {"EncryptionLibrary": "Java 5.3.0"},
    })
    .to_string()
}

/// The URL of `file` in an Azure stage, with the SAS token, as the connectors build it.
fn azure_url(location: &Location, file: &str) -> Result<String, DriverError> {
    let Location::Azure { location, account, endpoint, sas } = location else {
        return Err(malformed("names a storage eds does not upload to"));
    };
    let (container, path) = split_location(location);
    Ok(format!(
        "https://{account}.blob.{endpoint}/{}/{}?{sas}",
        path_escape(container),
        path_escape(&format!("{path}{file}"))
    ))
}

/// The Azure request (without its body).
fn azure_request(
    http: &reqwest::Client,
    location: &Location,
    file: &str,
    digest: &str,
    envelope: Option<&Envelope>,
) -> Result<reqwest::RequestBuilder, DriverError> {
    let mut req = http
        .put(azure_url(location, file)?)
        .header("x-ms-blob-type", "BlockBlob")
        .header("x-ms-meta-sfcdigest", digest);
    if let Some(envelope) = envelope {
        req = req
            .header("x-ms-meta-encryptiondata", encryption_data(envelope, "AES_CBC_128"))
            .header("x-ms-meta-matdesc", envelope.matdesc.clone());
    }
    Ok(req)
}

/// The GCS request (without its body).
fn gcs_request(
    http: &reqwest::Client,
    location: &Location,
    file: &str,
    digest: &str,
    envelope: Option<&Envelope>,
) -> Result<reqwest::RequestBuilder, DriverError> {
    let (url, token) = gcs_url(location, file)?;
    let mut req = http.put(&url).header("x-goog-meta-sfc-digest", digest);
    if let Some(envelope) = envelope {
        req = req
            .header("x-goog-meta-encryptiondata", encryption_data(envelope, "AES_CBC_256"))
            .header("x-goog-meta-matdesc", envelope.matdesc.clone());
    }
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    Ok(req)
}

/// The URL of `file` in an S3 stage, as the connectors build it.
fn s3_url(location: &Location, file: &str) -> Result<String, DriverError> {
    let Location::S3 { location, region, endpoint, regional, .. } = location else {
        return Err(malformed("names a storage eds does not upload to"));
    };
    let (bucket, path) = split_location(location);
    let host = if region.starts_with("cn-") {
        format!("{bucket}.s3.{region}.amazonaws.com.cn")
    } else if let Some(e) = endpoint {
        format!("{bucket}.{}", e.trim_start_matches("https://").trim_end_matches('/'))
    } else if *regional {
        format!("{bucket}.s3.{region}.amazonaws.com")
    } else {
        format!("{bucket}.s3.amazonaws.com")
    };
    Ok(format!("https://{host}/{}", path_escape(&format!("{path}{file}"))))
}

/// Now as SigV4's `x-amz-date`: `YYYYMMDDTHHMMSSZ`, UTC.
fn amz_date() -> String {
    jiff::Timestamp::now().strftime("%Y%m%dT%H%M%SZ").to_string()
}

fn hmac(key: &[u8], data: &str) -> Vec<u8> {
    ring::hmac::sign(&ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key), data.as_bytes()).as_ref().to_vec()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The `x-amz-*` headers and the AWS Signature Version 4 `Authorization` of a `PUT` of an object
/// to `url`, at `date`, its payload unsigned (as the connectors sign stage uploads).
fn s3_signed_headers(
    location: &Location,
    url: &str,
    digest: &str,
    envelope: Option<&Envelope>,
    date: &str,
) -> Result<Vec<(String, String)>, DriverError> {
    let Location::S3 { region, key_id, secret, token, .. } = location else {
        return Err(malformed("names a storage eds does not upload to"));
    };
    let parsed = reqwest::Url::parse(url).map_err(|_| malformed("gives an S3 location that makes no URL"))?;
    let host = match (parsed.host_str(), parsed.port()) {
        (Some(h), Some(p)) => format!("{h}:{p}"),
        (Some(h), None) => h.to_owned(),
        (None, _) => return Err(malformed("gives an S3 location without a host")),
    };
    let mut headers: Vec<(String, String)> = vec![
        ("host".into(), host),
        ("x-amz-content-sha256".into(), "UNSIGNED-PAYLOAD".into()),
        ("x-amz-date".into(), date.to_owned()),
        ("x-amz-meta-sfc-digest".into(), digest.to_owned()),
    ];
    if let Some(t) = token {
        headers.push(("x-amz-security-token".into(), t.clone()));
    }
    if let Some(e) = envelope {
        headers.push(("x-amz-meta-x-amz-iv".into(), e.iv.clone()));
        headers.push(("x-amz-meta-x-amz-key".into(), e.key.clone()));
        headers.push(("x-amz-meta-x-amz-matdesc".into(), e.matdesc.clone()));
    }
    headers.sort();
    let canonical: String = headers.iter().map(|(k, v)| format!("{k}:{}\n", v.trim())).collect();
    let signed = headers.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>().join(";");
    let request = format!("PUT\n{}\n\n{canonical}\n{signed}\nUNSIGNED-PAYLOAD", parsed.path());
    let day = &date[..8];
    let scope = format!("{day}/{region}/s3/aws4_request");
    let to_sign = format!(
        "AWS4-HMAC-SHA256\n{date}\n{scope}\n{}",
        hex(ring::digest::digest(&ring::digest::SHA256, request.as_bytes()).as_ref())
    );
    let key = ["s3", "aws4_request"]
        .iter()
        .fold(hmac(&hmac(format!("AWS4{secret}").as_bytes(), day), region), |k, part| hmac(&k, part));
    let signature = hex(&hmac(&key, &to_sign));
    headers.push((
        "authorization".into(),
        format!("AWS4-HMAC-SHA256 Credential={key_id}/{scope}, SignedHeaders={signed}, Signature={signature}"),
    ));
    // reqwest sets `host` from the URL.
    headers.retain(|(k, _)| k != "host");
    Ok(headers)
}

/// The S3 request (without its body).
fn s3_request(
    http: &reqwest::Client,
    location: &Location,
    url: &str,
    digest: &str,
    envelope: Option<&Envelope>,
    date: &str,
) -> Result<reqwest::RequestBuilder, DriverError> {
    let mut req = http.put(url).header("content-type", "application/octet-stream");
    for (k, v) in s3_signed_headers(location, url, digest, envelope, date)? {
        req = req.header(k, v);
    }
    Ok(req)
}

async fn send(req: reqwest::RequestBuilder, file: &str) -> Result<(), DriverError> {
    // The URL may carry a signature: messages name the file, not the URL.
    let resp = req.send().await.map_err(|e| {
        DriverError::new(
            ErrorClass::Transient,
            format!("Snowflake: uploading {file} to the stage failed: {}", e.without_url()),
        )
    })?;
    let status = resp.status();
    if status.is_success() {
        return Ok(());
    }
    let class = if status.is_server_error() || matches!(status.as_u16(), 408 | 429) {
        ErrorClass::Transient
    } else {
        ErrorClass::Unknown
    };
    Err(DriverError::new(class, format!("Snowflake: the stage's storage refused {file}: HTTP {status}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn material(len: usize) -> Material {
        Material { master_key: (0..len as u8).collect(), query_id: "01b2-q".into(), smk_id: "4242".into() }
    }

    #[test]
    fn upload_commands_are_read_as_the_connectors_read_them() {
        let data = json!({"command": "UPLOAD", "src_locations": ["/x.csv.gz"],
            "stageInfo": {"locationType": "GCS", "location": "bucket/stages/abc", "creds": {"GCS_ACCESS_TOKEN": "tok"},
                "presignedUrl": "", "endPoint": null},
            "encryptionMaterial": [{"queryStageMasterKey": B64.encode([7u8; 32]), "queryId": "q1", "smkId": 99}]});
        let c = UploadCommand::of(&data).unwrap();
        assert_eq!(c.material, Some(Material { master_key: vec![7; 32], query_id: "q1".into(), smk_id: "99".into() }));
        let (url, token) = gcs_url(&c.location, "eds 1.csv.gz").unwrap();
        assert_eq!(url, "https://storage.googleapis.com/bucket/stages/abc/eds%201.csv.gz");
        assert_eq!(token.as_deref(), Some("tok"));
        let presigned = json!({"command": "UPLOAD", "stageInfo": {"locationType": "GCS", "location": "b/",
            "presignedUrl": "http://h/fs_bucket/a.csv.gz", "creds": {}}});
        let c = UploadCommand::of(&presigned).unwrap();
        assert_eq!(c.material, None);
        assert_eq!(gcs_url(&c.location, "a.csv.gz").unwrap(), ("http://h/fs_bucket/a.csv.gz".to_owned(), None));
        let local =
            json!({"command": "UPLOAD", "stageInfo": {"locationType": "LOCAL_FS", "location": "/tmp/x/", "creds": {}}});
        assert_eq!(UploadCommand::of(&local).unwrap().location, Location::Other("LOCAL_FS".into()));
        let azure = json!({"command": "UPLOAD", "stageInfo": {"locationType": "AZURE", "location": "stages/a b/x",
            "storageAccount": "sfcacct", "endPoint": "blob.core.windows.net", "creds": {"AZURE_SAS_TOKEN": "?sv=2023&sig=SECRET"}}});
        let location = UploadCommand::of(&azure).unwrap().location;
        assert_eq!(
            azure_url(&location, "eds-1.csv.gz").unwrap(),
            "https://sfcacct.blob.core.windows.net/stages/a%20b/x/eds-1.csv.gz?sv=2023&sig=SECRET"
        );
        assert!(!format!("{location:?}").contains("SECRET"));
        let no_sas = json!({"command": "UPLOAD", "stageInfo": {"locationType": "AZURE", "location": "c",
            "storageAccount": "a", "endPoint": "core.windows.net", "creds": {}}});
        assert!(UploadCommand::of(&no_sas).unwrap_err().message.contains("no SAS token"));
        let s3 = json!({"command": "UPLOAD", "stageInfo": {"locationType": "S3", "location": "b/p/", "creds": {"AWS_KEY_ID": "k"}}});
        assert!(UploadCommand::of(&s3).unwrap_err().message.contains("without a region"));
        // What is not an upload command is an error that says what it was.
        let e = UploadCommand::of(&json!({"command": "DOWNLOAD"})).unwrap_err();
        assert!(e.message.contains("DOWNLOAD"), "{}", e.message);
        assert!(UploadCommand::of(&json!({"rowtype": []})).is_err());
        let bad = json!({"command": "UPLOAD", "stageInfo": {"locationType": "GCS"},
            "encryptionMaterial": {"queryStageMasterKey": B64.encode([1u8; 20])}});
        assert!(UploadCommand::of(&bad).unwrap_err().message.contains("20-byte"));
        // Credentials never show in a debug print.
        let shown = format!("{:?}", UploadCommand::of(&data).unwrap());
        assert!(!shown.contains("\"tok\"") && !shown.contains("7, 7"), "{shown}");
    }

    fn s3(location: &str, region: &str, endpoint: Option<&str>, regional: bool) -> Location {
        let info = json!({"command": "UPLOAD", "stageInfo": {"locationType": "S3", "location": location,
            "region": region, "endPoint": endpoint, "useS3RegionalUrl": regional,
            "creds": {"AWS_KEY_ID": "AKIDEXAMPLE", "AWS_SECRET_KEY": "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
                "AWS_TOKEN": "session-token"}}});
        UploadCommand::of(&info).unwrap().location
    }

    #[test]
    fn s3_urls_are_built_as_the_connectors_build_them() {
        let url = |l: Location| s3_url(&l, "eds 1.csv.gz").unwrap();
        assert_eq!(
            url(s3("sfc-b/stages/x", "us-west-2", None, false)),
            "https://sfc-b.s3.amazonaws.com/stages/x/eds%201.csv.gz"
        );
        assert_eq!(
            url(s3("sfc-b/stages/x/", "us-west-2", None, true)),
            "https://sfc-b.s3.us-west-2.amazonaws.com/stages/x/eds%201.csv.gz"
        );
        assert_eq!(
            url(s3("sfc-b", "us-gov-west-1", Some("s3-fips.us-gov-west-1.amazonaws.com"), false)),
            "https://sfc-b.s3-fips.us-gov-west-1.amazonaws.com/eds%201.csv.gz"
        );
        assert_eq!(
            url(s3("sfc-b/p", "cn-north-1", None, true)),
            "https://sfc-b.s3.cn-north-1.amazonaws.com.cn/p/eds%201.csv.gz"
        );
        // The secret and the token never show in a debug print.
        let shown = format!("{:?}", s3("b/p", "us-east-1", None, false));
        assert!(!shown.contains("wJalr") && !shown.contains("session-token"), "{shown}");
    }

    /// The Signature Version 4 of an upload equals botocore's (moto's venv) for the same request.
    #[test]
    fn s3_uploads_are_signed_as_botocore_signs_them() {
        let moto = std::env::var("MOTO_SERVER").unwrap_or_else(|_| {
            panic!("MOTO_SERVER is not set: this test reads botocore from moto's venv (scripts/test.sh installs it)")
        });
        let python = std::path::Path::new(&moto).with_file_name("python");
        let location = s3("sfc-b/stages/x", "us-west-2", None, true);
        let url = s3_url(&location, "eds-7-+ä.csv.gz").unwrap();
        let m = material(32);
        let (_, envelope) = encrypt_with(&m, b"rows", &[9; 32], &[3; 16]);
        let headers =
            s3_signed_headers(&location, &url, &digest(b"rows"), Some(&envelope), "20261204T101112Z").unwrap();
        let auth = headers.iter().find(|(k, _)| k == "authorization").map(|(_, v)| v.clone()).unwrap();
        let signed: serde_json::Map<String, Value> =
            headers.iter().filter(|(k, _)| k != "authorization").map(|(k, v)| (k.clone(), json!(v))).collect();
        const SCRIPT: &str = r#"
import sys, json
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
url, region, key, secret, token, date, headers = sys.argv[1:8]
req = AWSRequest(method="PUT", url=url, headers=json.loads(headers), data=b"")
auth = S3SigV4Auth(Credentials(key, secret, token), "s3", region)
req.context["timestamp"] = date
canonical = auth.canonical_request(req)
print(auth.signature(auth.string_to_sign(req, canonical), req))
"#;
        let out = std::process::Command::new(&python)
            .args(["-c", SCRIPT, &url, "us-west-2", "AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"])
            .args(["session-token", "20261204T101112Z", &Value::Object(signed).to_string()])
            .output()
            .unwrap_or_else(|e| panic!("running {}: {e}", python.display()));
        assert!(out.status.success(), "python: {}", String::from_utf8_lossy(&out.stderr));
        let theirs = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        assert_eq!(theirs.len(), 64, "{theirs}");
        assert!(auth.ends_with(&format!("Signature={theirs}")), "eds: {auth}\nbotocore: {theirs}");
        assert!(
            auth.starts_with("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20261204/us-west-2/s3/aws4_request, "),
            "{auth}"
        );
        for h in [
            "x-amz-meta-sfc-digest",
            "x-amz-meta-x-amz-key",
            "x-amz-meta-x-amz-iv",
            "x-amz-meta-x-amz-matdesc",
            "x-amz-security-token",
        ] {
            assert!(auth.contains(h), "{h} is signed: {auth}");
        }
    }

    #[test]
    fn padding_and_cbc_follow_the_standard() {
        assert_eq!(pad(b""), vec![16u8; 16]);
        assert_eq!(pad(&[1; 15]).last(), Some(&1));
        assert_eq!(pad(&[1; 16]).len(), 32);
        // NIST SP 800-38A, F.2.1 (CBC-AES128.Encrypt), first two blocks.
        let hex = |s: &str| {
            (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect::<Vec<u8>>()
        };
        let key = hex("2b7e151628aed2a6abf7158809cf4f3c");
        let iv = hex("000102030405060708090a0b0c0d0e0f");
        let mut data = hex("6bc1bee22e409f96e93d7e117393172aae2d8a571e03ac9c9eb76fac45af8e51");
        aes(&key, Some(&iv), &mut data);
        assert_eq!(data, hex("7649abac8119b246cee98e9b12e9197d5086cb9b507219ee95db113a917678b2"));
        // The envelope: the wrapped key is the padded file key under the master key (ECB).
        let m = material(16);
        let (body, env) = encrypt_with(&m, b"hello", &key, &iv);
        assert_eq!(body.len(), 16);
        let mut wrapped = pad(&key);
        aes(&m.master_key, None, &mut wrapped);
        assert_eq!(env.key, B64.encode(&wrapped));
        assert_eq!(env.iv, B64.encode(&iv));
        assert_eq!(env.matdesc, r#"{"queryId":"01b2-q","smkId":"4242","keySize":"128"}"#);
    }

    /// The official Python connector (fakesnow's venv) decrypts what [`encrypt`] wrote.
    #[test]
    fn the_python_connector_decrypts_what_eds_encrypts() {
        let python = super::super::fakesnow::python();
        for len in [16, 24, 32] {
            let m = material(len);
            let plain: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
            let (body, env) = encrypt(&m, &plain).unwrap();
            let dir = std::env::temp_dir().join(format!("eds-stage-{}-{len}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let enc = dir.join("enc");
            std::fs::write(&enc, &body).unwrap();
            const SCRIPT: &str = r#"
import sys, io, json
from snowflake.connector.encryption_util import SnowflakeEncryptionUtil
from snowflake.connector.constants import EncryptionMetadata
from snowflake.connector.storage_client import SnowflakeFileEncryptionMaterial
enc, key, iv, matdesc, master, qid, smk = sys.argv[1:8]
meta = EncryptionMetadata(key=key, iv=iv, matdesc=matdesc)
mat = SnowflakeFileEncryptionMaterial(query_stage_master_key=master, query_id=qid, smk_id=int(smk))
out = io.BytesIO()
with open(enc, "rb") as src:
    SnowflakeEncryptionUtil.decrypt_stream(meta, mat, src, out)
sys.stdout.buffer.write(out.getvalue())
"#;
            let out = std::process::Command::new(&python)
                .args(["-c", SCRIPT])
                .arg(&enc)
                .args([&env.key, &env.iv, &env.matdesc, &B64.encode(&m.master_key), &m.query_id, &m.smk_id])
                .output()
                .unwrap_or_else(|e| panic!("running {python}: {e}"));
            let _ = std::fs::remove_dir_all(&dir);
            assert!(out.status.success(), "python: {}", String::from_utf8_lossy(&out.stderr));
            assert_eq!(out.stdout, plain, "key size {len}");
        }
    }
}
