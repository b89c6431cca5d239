//! End-to-end encryption keys (`/keys/upload`, `/keys/query`, `/keys/claim`): device
//! identity keys, one-time keys and fallback keys.
//!
//! The server never sees private keys; it checks what it can (device keys belong to the
//! uploading device and are signed by its own ed25519 key; signed one-time keys are signed by
//! it too), keeps device keys immutable (the same keys uploaded again with other signatures
//! are accepted, the stored copy kept), and hands each one-time key out once.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use ruma::api::client::keys::{
    claim_keys, get_keys, upload_keys, upload_signatures, upload_signing_keys,
};
use ruma::encryption::{CrossSigningKey, DeviceKeys};
use ruma::serde::{Base64, Raw};
use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, DeviceKeyAlgorithm, OneTimeKeyAlgorithm,
    OwnedDeviceId, OwnedOneTimeKeyId, OwnedUserId, ServerName, UInt, UserId,
};
use serde_json::value::RawValue;

use crate::error::{Error, Result};
use crate::services::Services;
use crate::services::accounts::Identity;
use crate::services::device_lists::DeviceLists;
use crate::storage::e2ee_keys::{FallbackKeyRecord, KeyUpload};
use crate::storage::{StorageError, Store};

pub struct E2eeKeys {
    server_name: String,
    store: Arc<dyn Store>,
    /// New device keys change the user's device list.
    device_lists: Arc<DeviceLists>,
}

/// The algorithm clients count one-time keys of; always reported, zero included, because
/// clients (vodozemac's) read a missing count as "unknown" rather than zero.
const SIGNED_CURVE25519: &str = "signed_curve25519";

impl E2eeKeys {
    pub fn new(server_name: String, store: Arc<dyn Store>, device_lists: Arc<DeviceLists>) -> Self {
        Self { server_name, store, device_lists }
    }

    fn is_local(&self, server: &ServerName) -> bool {
        server.as_str() == self.server_name
    }

    /// `POST /keys/upload` for the caller's own device. Nothing is stored unless the whole
    /// upload is valid.
    pub async fn upload(
        &self,
        who: &Identity,
        req: upload_keys::v3::Request,
    ) -> Result<BTreeMap<OneTimeKeyAlgorithm, UInt>> {
        let mut upload = KeyUpload::default();
        let signing_key = match &req.device_keys {
            Some(raw) => {
                let (json, key) = self.check_device_keys(who, raw)?;
                upload.device_keys = Some(json);
                Some(key)
            }
            None => match self.store.device_keys(&who.localpart, who.device_id.as_str()).await? {
                Some(stored) => Some(device_ed25519_key(who, &canonical(&stored)?)?),
                None => None,
            },
        };
        for (id, raw) in &req.one_time_keys {
            let json = check_one_time_key(who, signing_key.as_deref(), id, raw.json().get())?;
            upload.one_time_keys.push((id.to_string(), json));
        }
        for (id, raw) in &req.fallback_keys {
            let json = check_one_time_key(who, signing_key.as_deref(), id, raw.json().get())?;
            let algorithm = id.algorithm().to_string();
            if upload.fallback_keys.iter().any(|(a, _)| *a == algorithm) {
                return Err(Error::InvalidParam(format!(
                    "At most one fallback key per algorithm; several {algorithm} keys given"
                )));
            }
            upload.fallback_keys.push((
                algorithm,
                FallbackKeyRecord { key_id: id.to_string(), key: json, used: false },
            ));
        }
        // Device keys are immutable, but clients upload the same keys again with more
        // signatures: matrix-sdk-crypto adds its self-signing key's signature once it has
        // bootstrapped cross-signing, racing its first plain upload. Such a re-upload is
        // accepted and the stored copy kept; signatures by cross-signing keys arrive (and are
        // checked) through `/keys/signatures/upload`. A second attempt covers a concurrent
        // upload that stored the device's keys between the check and the write.
        let mut first_attempt = true;
        let new_device_keys = loop {
            if let Some(json) = &upload.device_keys
                && let Some(stored) =
                    self.store.device_keys(&who.localpart, who.device_id.as_str()).await?
            {
                if !same_apart_from_signatures(&stored, json)? {
                    return Err(Error::InvalidParam(
                        "This device's keys were already uploaded; device keys cannot change"
                            .into(),
                    ));
                }
                upload.device_keys = None;
            }
            let retry = first_attempt && upload.device_keys.is_some();
            first_attempt = false;
            match self
                .store
                .upload_keys(&who.localpart, who.device_id.as_str(), upload.clone())
                .await
            {
                Err(StorageError::AlreadyExists) if retry => continue,
                Err(StorageError::AlreadyExists) => {
                    return Err(Error::InvalidParam(
                        "Keys with these IDs were already uploaded with different content".into(),
                    ));
                }
                Err(StorageError::NotFound) => {
                    return Err(Error::UnknownToken { soft_logout: false });
                }
                other => break other?,
            }
        };
        if new_device_keys {
            self.device_lists.changed(&who.user_id).await?;
        }
        self.one_time_key_counts(who).await
    }

    /// Checks uploaded device keys; returns their canonical JSON (without `unsigned`) and
    /// the device's ed25519 key.
    fn check_device_keys(&self, who: &Identity, raw: &Raw<DeviceKeys>) -> Result<(String, String)> {
        let keys: DeviceKeys =
            raw.deserialize().map_err(|e| Error::BadJson(format!("Invalid device_keys: {e}")))?;
        if keys.user_id != who.user_id || keys.device_id != who.device_id {
            return Err(Error::Forbidden(
                "device_keys may only be uploaded for the requesting device".into(),
            ));
        }
        let mut object = canonical(raw.json().get())?;
        object.remove("unsigned");
        let ed25519 = device_ed25519_key(who, &object)?;
        verify_signature(who, &ed25519, &object)?;
        Ok((canonical_string(&object)?, ed25519))
    }

    /// The unclaimed one-time keys of the caller's device, per algorithm
    /// (`signed_curve25519` always present).
    pub async fn one_time_key_counts(
        &self,
        who: &Identity,
    ) -> Result<BTreeMap<OneTimeKeyAlgorithm, UInt>> {
        let mut counts: BTreeMap<OneTimeKeyAlgorithm, UInt> = self
            .store
            .one_time_key_counts(&who.localpart, who.device_id.as_str())
            .await?
            .into_iter()
            .map(|(algorithm, n)| {
                (OneTimeKeyAlgorithm::from(algorithm), UInt::try_from(n).unwrap_or(UInt::MAX))
            })
            .collect();
        counts.entry(OneTimeKeyAlgorithm::from(SIGNED_CURVE25519)).or_insert(UInt::MIN);
        Ok(counts)
    }

    /// The algorithms of the caller's device's fallback keys that were not used yet.
    pub async fn unused_fallback_key_types(&self, who: &Identity) -> Result<Vec<String>> {
        Ok(self.store.unused_fallback_key_types(&who.localpart, who.device_id.as_str()).await?)
    }

    /// `POST /keys/query`: the device keys of local users (each with its display name in
    /// `unsigned`); users of other servers are reported in `failures` until federation
    /// exists; unknown users and devices are left out.
    pub async fn query(
        &self,
        requester: &UserId,
        request: BTreeMap<OwnedUserId, Vec<OwnedDeviceId>>,
    ) -> Result<get_keys::v3::Response> {
        let mut response = get_keys::v3::Response::new();
        for (user_id, wanted) in request {
            if !self.is_local(user_id.server_name()) {
                response.failures.insert(user_id.server_name().to_string(), serde_json::json!({}));
                continue;
            }
            let devices = self.user_devices(requester, &user_id, &wanted).await?;
            for (kind, json) in self.store.cross_signing_keys(user_id.localpart()).await? {
                let mut object = json_object(&json)?;
                if kind == "master" {
                    let (_, public) = single_key(&canonical(&json)?)?;
                    self.add_signatures(&mut object, &user_id, &public, requester).await?;
                }
                let raw: Raw<CrossSigningKey> = Raw::from_json(
                    serde_json::value::to_raw_value(&object)
                        .map_err(|e| Error::Internal(format!("cross-signing key: {e}")))?,
                );
                match kind.as_str() {
                    "master" => response.master_keys.insert(user_id.clone(), raw),
                    "self_signing" => response.self_signing_keys.insert(user_id.clone(), raw),
                    // A user-signing key is the owner's business only.
                    "user_signing" if *user_id == *requester => {
                        response.user_signing_keys.insert(user_id.clone(), raw)
                    }
                    _ => None,
                };
            }
            response.device_keys.insert(user_id, devices);
        }
        Ok(response)
    }

    /// Adds to a key of `owner` (`target`: a device ID or a master public key) the
    /// signatures made on it since its upload: the owner's, and the requester's own.
    async fn add_signatures(
        &self,
        object: &mut serde_json::Map<String, serde_json::Value>,
        owner: &UserId,
        target: &str,
        requester: &UserId,
    ) -> Result<()> {
        for (signer, key_id, signature) in
            self.store.key_signatures(owner.localpart(), target).await?
        {
            if signer != owner.as_str() && signer != requester.as_str() {
                continue;
            }
            let signatures = object.entry("signatures").or_insert_with(|| serde_json::json!({}));
            if let Some(by_user) = signatures.as_object_mut() {
                let mine = by_user.entry(signer).or_insert_with(|| serde_json::json!({}));
                if let Some(mine) = mine.as_object_mut() {
                    mine.insert(key_id, serde_json::Value::String(signature));
                }
            }
        }
        Ok(())
    }

    async fn user_devices(
        &self,
        requester: &UserId,
        user_id: &UserId,
        wanted: &[OwnedDeviceId],
    ) -> Result<BTreeMap<OwnedDeviceId, Raw<DeviceKeys>>> {
        let localpart = user_id.localpart();
        let names: BTreeMap<String, Option<String>> = self
            .store
            .devices(localpart)
            .await?
            .into_iter()
            .map(|d| (d.device_id, d.display_name))
            .collect();
        let mut out = BTreeMap::new();
        for (device_id, json) in self.store.user_device_keys(localpart).await? {
            let Some(name) = names.get(&device_id) else { continue };
            if !wanted.is_empty() && !wanted.iter().any(|d| d.as_str() == device_id) {
                continue;
            }
            let mut object = json_object(&json)?;
            self.add_signatures(&mut object, user_id, &device_id, requester).await?;
            if let Some(name) = name {
                object
                    .insert("unsigned".into(), serde_json::json!({ "device_display_name": name }));
            }
            let raw = serde_json::value::to_raw_value(&object)
                .map_err(|e| Error::Internal(format!("device keys: {e}")))?;
            out.insert(OwnedDeviceId::from(device_id), Raw::from_json(raw));
        }
        Ok(out)
    }

    /// `POST /keys/claim`: one key per requested device, a one-time key while any is left,
    /// else the device's fallback key. Unknown users and devices get nothing, not an error.
    pub async fn claim(
        &self,
        request: BTreeMap<OwnedUserId, BTreeMap<OwnedDeviceId, OneTimeKeyAlgorithm>>,
    ) -> Result<claim_keys::v3::Response> {
        let mut response = claim_keys::v3::Response::new(BTreeMap::new());
        // Every key of the request is claimed in one write (one fsync, not one per device).
        let mut wanted = Vec::new();
        for (user_id, devices) in request {
            if !self.is_local(user_id.server_name()) {
                response.failures.insert(user_id.server_name().to_string(), serde_json::json!({}));
                continue;
            }
            for (device_id, algorithm) in devices {
                wanted.push((user_id.clone(), device_id, algorithm));
            }
        }
        let claims = wanted
            .iter()
            .map(|(u, d, a)| (u.localpart().to_owned(), d.to_string(), a.to_string()))
            .collect();
        let found = self.store.claim_keys(claims).await?;
        for ((user_id, device_id, _), found) in wanted.into_iter().zip(found) {
            let Some((id, json)) = found else { continue };
            let id = OwnedOneTimeKeyId::try_from(id)
                .map_err(|e| Error::Internal(format!("stored key ID: {e}")))?;
            let raw = RawValue::from_string(json)
                .map_err(|e| Error::Internal(format!("stored key: {e}")))?;
            response
                .one_time_keys
                .entry(user_id)
                .or_default()
                .insert(device_id, BTreeMap::from([(id, Raw::from_json(raw))]));
        }
        Ok(response)
    }
}

/// Checked cross-signing keys, ready to store.
pub struct SigningKeysUpload {
    /// `(kind, canonical JSON)` of the keys that differ from the stored ones.
    keys: Vec<(String, String)>,
    /// Whether a stored key would be replaced by a different one (then UIA is required).
    pub replaces: bool,
}

impl E2eeKeys {
    /// Checks `/keys/device_signing/upload`: each key belongs to the caller, has its usage
    /// and one ed25519 key; the self-signing and user-signing keys are signed by the master
    /// key (the uploaded one, else the stored one).
    pub async fn check_signing_keys(
        &self,
        who: &Identity,
        req: &upload_signing_keys::v3::Request,
    ) -> Result<SigningKeysUpload> {
        let stored = self.store.cross_signing_keys(&who.localpart).await?;
        let mut keys = Vec::new();
        let master = match &req.master_key {
            Some(raw) => Some(check_cross_signing_key(who, raw, "master")?),
            None => stored.get("master").cloned(),
        };
        let master_key = master.as_deref().map(|j| single_key(&canonical(j)?)).transpose()?;
        if let (Some(_), Some(json)) = (&req.master_key, master) {
            keys.push(("master".to_owned(), json));
        }
        for (kind, raw) in
            [("self_signing", &req.self_signing_key), ("user_signing", &req.user_signing_key)]
        {
            let Some(raw) = raw else { continue };
            let json = check_cross_signing_key(who, raw, kind)?;
            let (id, public) = master_key.as_ref().ok_or_else(|| {
                Error::InvalidParam(format!("A {kind} key needs a master key to sign it"))
            })?;
            verify_signature_by(who.user_id.as_str(), id, public, &canonical(&json)?)?;
            keys.push((kind.to_owned(), json));
        }
        let replaces = keys.iter().any(|(k, j)| stored.get(k).is_some_and(|old| old != j));
        keys.retain(|(k, j)| stored.get(k) != Some(j));
        Ok(SigningKeysUpload { keys, replaces })
    }

    /// Stores checked cross-signing keys; a change re-keys the user's device list.
    pub async fn store_signing_keys(
        &self,
        who: &Identity,
        upload: SigningKeysUpload,
    ) -> Result<()> {
        if upload.keys.is_empty() {
            return Ok(());
        }
        self.store.set_cross_signing_keys(&who.localpart, upload.keys).await?;
        self.device_lists.changed(&who.user_id).await
    }
}

/// A signature row: (target localpart, target key, signer user, signer key ID, signature).
type SignatureRow = (String, String, String, String, String);

impl E2eeKeys {
    /// `POST /keys/signatures/upload`: signatures of the caller's self-signing key on their
    /// devices, of their devices on their master key, and of their user-signing key on
    /// other users' master keys. Each key is judged on its own; failures are reported per
    /// key, and the valid signatures are stored.
    pub async fn upload_signatures(
        &self,
        who: &Identity,
        signed_keys: BTreeMap<OwnedUserId, upload_signatures::v3::SignedKeys>,
    ) -> Result<upload_signatures::v3::Response> {
        let mine = self.store.cross_signing_keys(&who.localpart).await?;
        let my_key = |kind: &str| -> Result<Option<(String, String)>> {
            mine.get(kind).map(|j| single_key(&canonical(j)?)).transpose()
        };
        let (self_signing, user_signing) = (my_key("self_signing")?, my_key("user_signing")?);
        let mut rows = Vec::new();
        let mut response = upload_signatures::v3::Response::new();
        for (target, keys) in &signed_keys {
            for (key_id, json) in keys.iter() {
                let outcome = self
                    .check_signed_key(who, target, key_id, json.get(), &self_signing, &user_signing)
                    .await;
                match outcome {
                    Ok(mut new) => rows.append(&mut new),
                    Err(e) => {
                        let failure = serde_json::json!({
                            "errcode": "M_INVALID_SIGNATURE",
                            "error": e.to_string(),
                        });
                        if let Ok(failure) = serde_json::from_value(failure) {
                            response
                                .failures
                                .entry(target.clone())
                                .or_default()
                                .insert(key_id.to_owned(), failure);
                        }
                    }
                }
            }
        }
        if !rows.is_empty() {
            let changed: BTreeSet<String> = rows.iter().map(|r| r.0.clone()).collect();
            self.store.add_key_signatures(rows).await?;
            for localpart in changed {
                if let Ok(user) = UserId::parse(format!("@{localpart}:{}", self.server_name)) {
                    self.device_lists.changed(&user).await?;
                }
            }
        }
        Ok(response)
    }

    /// Checks the signatures on one key of `/keys/signatures/upload`; returns the rows to
    /// store.
    async fn check_signed_key(
        &self,
        who: &Identity,
        target: &UserId,
        key_id: &str,
        json: &str,
        self_signing: &Option<(String, String)>,
        user_signing: &Option<(String, String)>,
    ) -> Result<Vec<SignatureRow>> {
        if !self.is_local(target.server_name()) {
            return Err(Error::InvalidParam("Keys of other servers cannot be signed yet".into()));
        }
        let object = canonical(json)?;
        let localpart = target.localpart();
        let signer = who.user_id.as_str();
        let row = |signer_key: &str, object: &CanonicalJsonObject| -> Option<SignatureRow> {
            let sig = match object.get("signatures")? {
                CanonicalJsonValue::Object(by) => match by.get(signer)? {
                    CanonicalJsonValue::Object(sigs) => match sigs.get(signer_key)? {
                        CanonicalJsonValue::String(sig) => sig.clone(),
                        _ => return None,
                    },
                    _ => return None,
                },
                _ => return None,
            };
            Some((
                localpart.to_owned(),
                key_id.to_owned(),
                signer.to_owned(),
                signer_key.to_owned(),
                sig,
            ))
        };
        // The signed object must be the stored key (signatures and `unsigned` aside).
        let same = |stored: &str| -> Result<()> {
            let stored =
                ruma::signatures::to_canonical_json_string_for_signing(&canonical(stored)?);
            let given = ruma::signatures::to_canonical_json_string_for_signing(&object);
            match (stored, given) {
                (Ok(a), Ok(b)) if a == b => Ok(()),
                _ => Err(Error::InvalidParam(format!("{key_id} is not the stored key"))),
            }
        };
        let targets_cross = self.store.cross_signing_keys(localpart).await?;
        let target_master = match targets_cross.get("master") {
            Some(j) => Some((single_key(&canonical(j)?)?, j.clone())),
            None => None,
        };
        let is_master = target_master
            .as_ref()
            .is_some_and(|((id, public), _)| key_id == public || key_id == id);
        if *target == *who.user_id && !is_master {
            // One of the caller's devices, signed by their self-signing key.
            let stored = self
                .store
                .device_keys(localpart, key_id)
                .await?
                .ok_or_else(|| Error::NotFound(format!("Unknown device {key_id}")))?;
            same(&stored)?;
            let (id, public) = self_signing
                .as_ref()
                .ok_or_else(|| Error::InvalidParam("No self-signing key uploaded".into()))?;
            verify_signature_by(signer, id, public, &object)?;
            return Ok(row(id, &object).into_iter().collect());
        }
        let Some(((_, public), stored)) = target_master else {
            return Err(Error::NotFound(format!("Unknown key {key_id}")));
        };
        if !is_master {
            return Err(Error::NotFound(format!("Unknown key {key_id}")));
        }
        same(&stored)?;
        let key_id = public.as_str();
        let mut rows = Vec::new();
        if *target == *who.user_id {
            // The caller's master key, signed by their devices.
            let devices = self.store.user_device_keys(localpart).await?;
            for (device_id, keys) in devices {
                let signer_key = format!("{}:{device_id}", DeviceKeyAlgorithm::Ed25519);
                let Some(r) = row(&signer_key, &object) else { continue };
                let public = device_ed25519_key_of(&device_id, &canonical(&keys)?)?;
                verify_signature_by(signer, &signer_key, &public, &object)?;
                rows.push((r.0, key_id.to_owned(), r.2, r.3, r.4));
            }
        } else {
            // Another user's master key, signed by the caller's user-signing key.
            let (id, public) = user_signing
                .as_ref()
                .ok_or_else(|| Error::InvalidParam("No user-signing key uploaded".into()))?;
            verify_signature_by(signer, id, public, &object)?;
            if let Some(r) = row(id, &object) {
                rows.push((r.0, key_id.to_owned(), r.2, r.3, r.4));
            }
        }
        if rows.is_empty() {
            return Err(Error::InvalidParam(format!("No signature of the caller on {key_id}")));
        }
        Ok(rows)
    }
}

impl Services {
    /// `POST /keys/device_signing/upload`: replacing existing keys needs user-interactive
    /// auth (a password); the first upload and identical re-uploads do not.
    pub async fn upload_signing_keys(
        &self,
        who: &Identity,
        req: upload_signing_keys::v3::Request,
    ) -> Result<()> {
        let upload = self.e2ee_keys.check_signing_keys(who, &req).await?;
        if upload.replaces {
            self.accounts.authorize_cross_signing(who, req.auth.as_ref()).await?;
        }
        self.e2ee_keys.store_signing_keys(who, upload).await
    }
}

/// Checks one cross-signing key of the caller; returns its canonical JSON.
fn check_cross_signing_key(
    who: &Identity,
    raw: &Raw<CrossSigningKey>,
    usage: &str,
) -> Result<String> {
    let key: CrossSigningKey =
        raw.deserialize().map_err(|e| Error::BadJson(format!("Invalid {usage} key: {e}")))?;
    if key.user_id != who.user_id {
        return Err(Error::Forbidden("Cross-signing keys may only be uploaded for oneself".into()));
    }
    if !key.usage.iter().any(|u| u.as_str() == usage) {
        return Err(Error::InvalidParam(format!("The {usage} key lacks the usage {usage:?}")));
    }
    if key.keys.len() != 1 {
        return Err(Error::InvalidParam(format!("The {usage} key must hold exactly one key")));
    }
    let mut object = canonical(raw.json().get())?;
    object.remove("unsigned");
    canonical_string(&object)
}

/// The one `(key ID, public key)` of a cross-signing key.
fn single_key(object: &CanonicalJsonObject) -> Result<(String, String)> {
    match object.get("keys") {
        Some(CanonicalJsonValue::Object(keys)) => match keys.iter().next() {
            Some((id, CanonicalJsonValue::String(public))) => Ok((id.clone(), public.clone())),
            _ => Err(Error::InvalidParam("Cross-signing key without a key".into())),
        },
        _ => Err(Error::InvalidParam("Cross-signing key without keys".into())),
    }
}

/// A stored key as a JSON object.
fn json_object(json: &str) -> Result<serde_json::Map<String, serde_json::Value>> {
    serde_json::from_str(json).map_err(|e| Error::Internal(format!("stored key: {e}")))
}

fn canonical(json: &str) -> Result<CanonicalJsonObject> {
    serde_json::from_str(json).map_err(|e| Error::BadJson(format!("Invalid key JSON: {e}")))
}

/// Whether two device-keys JSON objects are the same keys, `signatures` and `unsigned` aside.
fn same_apart_from_signatures(stored: &str, uploaded: &str) -> Result<bool> {
    let unsigned = |json: &str| -> Result<String> {
        ruma::signatures::to_canonical_json_string_for_signing(&canonical(json)?)
            .map_err(|e| Error::BadJson(format!("Invalid device_keys: {e}")))
    };
    Ok(unsigned(stored)? == unsigned(uploaded)?)
}

fn canonical_string(object: &CanonicalJsonObject) -> Result<String> {
    serde_json::to_string(object).map_err(|e| Error::Internal(format!("canonical JSON: {e}")))
}

/// The device's own ed25519 key from its device keys.
fn device_ed25519_key(who: &Identity, object: &CanonicalJsonObject) -> Result<String> {
    device_ed25519_key_of(who.device_id.as_str(), object)
}

fn device_ed25519_key_of(device_id: &str, object: &CanonicalJsonObject) -> Result<String> {
    let id = format!("{}:{device_id}", DeviceKeyAlgorithm::Ed25519);
    match object.get("keys") {
        Some(CanonicalJsonValue::Object(keys)) => match keys.get(&id) {
            Some(CanonicalJsonValue::String(key)) => Ok(key.clone()),
            _ => Err(Error::InvalidParam(format!("device_keys has no key {id}"))),
        },
        _ => Err(Error::InvalidParam("device_keys has no keys".into())),
    }
}

/// Checks the signature of the device (`signatures.<user>.ed25519:<device>`) on `object`.
fn verify_signature(who: &Identity, ed25519: &str, object: &CanonicalJsonObject) -> Result<()> {
    let key_id = format!("{}:{}", DeviceKeyAlgorithm::Ed25519, who.device_id);
    verify_signature_by(who.user_id.as_str(), &key_id, ed25519, object)
}

/// Checks the signature `signatures.<user_id>.<key_id>` on `object` with the ed25519
/// `public_key` (unpadded base64).
fn verify_signature_by(
    user_id: &str,
    key_id: &str,
    public_key: &str,
    object: &CanonicalJsonObject,
) -> Result<()> {
    let signature = match object.get("signatures") {
        Some(CanonicalJsonValue::Object(by_user)) => match by_user.get(user_id) {
            Some(CanonicalJsonValue::Object(sigs)) => match sigs.get(key_id) {
                Some(CanonicalJsonValue::String(sig)) => Some(sig),
                _ => None,
            },
            _ => None,
        },
        _ => None,
    };
    let bad = |why: &str| Error::InvalidParam(format!("Invalid signature by {key_id}: {why}"));
    let signature = signature.ok_or_else(|| bad("missing"))?;
    let signature: Base64 = Base64::parse(signature).map_err(|_| bad("not base64"))?;
    let public_key: Base64 = Base64::parse(public_key).map_err(|_| bad("key not base64"))?;
    let signed = ruma::signatures::to_canonical_json_string_for_signing(object)
        .map_err(|e| bad(&e.to_string()))?;
    ruma::signatures::verify_canonical_json_bytes(
        &ruma::SigningKeyAlgorithm::Ed25519,
        public_key.as_bytes(),
        signature.as_bytes(),
        signed.as_bytes(),
    )
    .map_err(|_| bad("does not verify"))
}

/// Checks one uploaded one-time or fallback key; returns its canonical JSON. A signed key
/// (an object) must carry a valid signature of the device, so the device keys must be known.
fn check_one_time_key(
    who: &Identity,
    signing_key: Option<&str>,
    id: &OwnedOneTimeKeyId,
    json: &str,
) -> Result<String> {
    let value: CanonicalJsonValue = serde_json::from_str(json)
        .map_err(|e| Error::BadJson(format!("Invalid one-time key {id}: {e}")))?;
    match &value {
        CanonicalJsonValue::String(_) => {}
        CanonicalJsonValue::Object(object) => {
            if !matches!(object.get("key"), Some(CanonicalJsonValue::String(_))) {
                return Err(Error::BadJson(format!("One-time key {id} has no key")));
            }
            let signing_key = signing_key.ok_or_else(|| {
                Error::InvalidParam(format!(
                    "Signed key {id} uploaded before the device's keys; upload device_keys first"
                ))
            })?;
            verify_signature(who, signing_key, object)?;
        }
        _ => return Err(Error::BadJson(format!("Invalid one-time key {id}"))),
    }
    serde_json::to_string(&value).map_err(|e| Error::Internal(format!("canonical JSON: {e}")))
}
