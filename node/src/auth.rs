//! Challenge/response authentication and tokens (spec §2), shareable between replicas.
//!
//! **Design.** Every replica of a node set reads the same secret (`auth.secretFile`). From it each
//! tenant gets two HMAC keys, one for challenges and one for tokens, so a token of one tenant is never
//! valid for another.
//! - A challenge is *stateless and self-authenticating*: `v1.<payload>.<mac>` where the payload names
//!   the tenant, the username, optionally the device key's fingerprint, an expiry and a random nonce.
//!   Any replica can check it without shared state.
//! - Single use is enforced per replica: a redeemed challenge's nonce is remembered until it expires.
//!   Trade-off: within its lifetime (5 min) one signed challenge could be redeemed once on *each*
//!   replica. That only yields a token for the same device that signed it, to whoever already holds
//!   the signature (taken from a TLS-protected request); clients stick to one replica through session
//!   affinity anyway. A shared replay cache (e.g. in the store) would close that gap at the cost of a
//!   write per login.
//! - Tokens are HS256 JWTs with `exp` (lifetime 1 h), validated on every request against the
//!   *current* directory: the device key must still be active, so revocation is immediate.

use std::collections::HashMap;
use std::sync::Mutex;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rand::Rng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::crypto::keys::pem_lookup_key;
use crate::crypto::signing::parse_signature;
use crate::directory::{Principal, TenantDirectory};
use crate::wire::b64;

type HmacSha256 = Hmac<Sha256>;

/// Why a challenge could not be issued (maps to 403/404/503).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChallengeError {
    #[error("User \"{0}\" has been revoked from this tenant.")]
    Revoked(String),
    #[error("User \"{0}\" is not found in this server's tenant directory. The user may not have been registered yet, or the tenant's directory database may not have been synced to this server yet. Ask the tenant administrator to sync the directory.")]
    UnknownUser(String),
    #[error("This device's signing key is not yet in the tenant directory on this server for user \"{0}\". After the administrator approved the join request, they must sync the directory database to this server before the new device can connect.")]
    UnknownDeviceKey(String),
    #[error("No active access grant is known for the provided signing key on this server. The access may have been revoked, or the tenant's directory database may not have been synced to this server yet. Ask the tenant administrator to sync the directory.")]
    UnknownKey,
    #[error("A username or signing public key is required to request a challenge.")]
    NothingGiven,
}

/// Why `/auth/authenticate` failed: the `error` text of `{success:false,error}`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthenticateError {
    #[error("Challenge not found or expired")]
    NotFound,
    #[error("Challenge expired")]
    Expired,
    #[error("Challenge already used")]
    AlreadyUsed,
    #[error("Invalid signature")]
    InvalidSignature,
    #[error("User not found or no active grant for this device")]
    NoActiveKey,
    #[error("Too many outstanding challenges on this server, try again shortly")]
    Busy,
}

#[derive(Debug, Serialize, Deserialize)]
struct ChallengePayload {
    /// tenant
    t: String,
    /// username recorded on the challenge
    u: String,
    /// fingerprint of the named device key, if one was named
    #[serde(default, skip_serializing_if = "Option::is_none")]
    k: Option<String>,
    /// expiry, ms
    e: i64,
    /// nonce, hex
    n: String,
}

/// JWT claims, in the reference's key order (spec §2.4).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Claims {
    pub sub: String,
    pub iat: i64,
    pub exp: i64,
    pub tenant_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_signing_key: Option<String>,
}

fn key_fingerprint(pem: &str) -> String {
    hex::encode(&Sha256::digest(pem_lookup_key(pem).as_bytes())[..16])
}

pub struct AuthService {
    secret: Vec<u8>,
    token_ttl_secs: i64,
    challenge_ttl_ms: i64,
    max_redeemed: usize,
    /// nonce → expiry (ms) of redeemed challenges.
    redeemed: Mutex<HashMap<String, i64>>,
}

impl AuthService {
    pub fn new(secret: Vec<u8>, config: &crate::config::AuthConfig) -> Self {
        AuthService {
            secret,
            token_ttl_secs: config.token_ttl_secs as i64,
            challenge_ttl_ms: config.challenge_ttl_secs as i64 * 1000,
            max_redeemed: config.max_outstanding_challenges,
            redeemed: Mutex::new(HashMap::new()),
        }
    }

    /// A random per-process secret (single replica; tokens die on restart).
    pub fn random_secret() -> Vec<u8> {
        let mut s = vec![0u8; 32];
        rand::rng().fill_bytes(&mut s);
        s
    }

    fn derived_key(&self, purpose: &str, tenant: &str) -> Vec<u8> {
        let mut mac = HmacSha256::new_from_slice(&self.secret).expect("HMAC takes any key length");
        mac.update(purpose.as_bytes());
        mac.update(&[0]);
        mac.update(tenant.as_bytes());
        mac.finalize().into_bytes().to_vec()
    }

    fn challenge_mac(&self, tenant: &str, payload: &str) -> Vec<u8> {
        let mut mac = HmacSha256::new_from_slice(&self.derived_key("challenge", tenant))
            .expect("HMAC takes any key length");
        mac.update(payload.as_bytes());
        mac.finalize().into_bytes().to_vec()
    }

    /// Issues a challenge for a username and/or device key (spec §2.1).
    pub fn issue_challenge(
        &self,
        tenant: &str,
        directory: &TenantDirectory,
        username: Option<&str>,
        signing_public_key: Option<&str>,
        now_ms: i64,
    ) -> Result<String, ChallengeError> {
        let (recorded, key) = match (username, signing_public_key) {
            (Some(name), key) => {
                let devices = directory.by_username(name);
                let active: Vec<_> = devices.iter().filter(|p| p.is_active()).collect();
                if active.is_empty() {
                    return Err(if devices.is_empty() {
                        ChallengeError::UnknownUser(name.to_string())
                    } else {
                        ChallengeError::Revoked(name.to_string())
                    });
                }
                if let Some(key) = key {
                    let wanted = pem_lookup_key(key);
                    if !active
                        .iter()
                        .any(|p| pem_lookup_key(&p.signing_pem) == wanted)
                    {
                        return Err(ChallengeError::UnknownDeviceKey(name.to_string()));
                    }
                }
                (name.to_string(), key)
            }
            (None, Some(key)) => {
                let principal = directory
                    .active_by_signing_key(key)
                    .ok_or(ChallengeError::UnknownKey)?;
                (principal.username.clone(), Some(key))
            }
            (None, None) => return Err(ChallengeError::NothingGiven),
        };
        let mut nonce = [0u8; 16];
        rand::rng().fill_bytes(&mut nonce);
        let payload = ChallengePayload {
            t: tenant.to_string(),
            u: recorded,
            k: key.map(key_fingerprint),
            e: now_ms + self.challenge_ttl_ms,
            n: hex::encode(nonce),
        };
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&payload).expect("serialises"));
        let mac = URL_SAFE_NO_PAD.encode(self.challenge_mac(tenant, &payload));
        Ok(format!("v1.{payload}.{mac}"))
    }

    fn open_challenge(&self, tenant: &str, challenge: &str) -> Option<ChallengePayload> {
        let rest = challenge.strip_prefix("v1.")?;
        let (payload, mac) = rest.split_once('.')?;
        let mac = URL_SAFE_NO_PAD.decode(mac).ok()?;
        let mut check = HmacSha256::new_from_slice(&self.derived_key("challenge", tenant)).ok()?;
        check.update(payload.as_bytes());
        check.verify_slice(&mac).ok()?;
        let parsed: ChallengePayload =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()?;
        (parsed.t == tenant).then_some(parsed)
    }

    /// Redeems a signed challenge for a token (spec §2.3). The challenge is spent only by a valid
    /// signature: a wrong one costs the caller an attempt (rate-limited per address) but nothing
    /// that a valid login needs, so whoever knows a username cannot lock its owner — or anyone —
    /// out. The spent-challenge memory therefore only grows with successful logins.
    pub fn authenticate(
        &self,
        tenant: &str,
        directory: &TenantDirectory,
        challenge: &str,
        signature_b64: &str,
        now_ms: i64,
    ) -> Result<String, AuthenticateError> {
        let payload = self
            .open_challenge(tenant, challenge)
            .ok_or(AuthenticateError::NotFound)?;
        if payload.e < now_ms {
            return Err(AuthenticateError::Expired);
        }
        if self.is_spent(&payload.n) {
            return Err(AuthenticateError::AlreadyUsed);
        }
        let signature = b64::decode(signature_b64)
            .ok()
            .and_then(|s| parse_signature(&s))
            .ok_or(AuthenticateError::InvalidSignature)?;
        let candidates: Vec<&std::sync::Arc<Principal>> = directory
            .by_username(&payload.u)
            .iter()
            .filter(|p| p.is_active())
            .filter(|p| {
                payload
                    .k
                    .as_deref()
                    .is_none_or(|k| key_fingerprint(&p.signing_pem) == k)
            })
            .collect();
        if candidates.is_empty() {
            return Err(AuthenticateError::NoActiveKey);
        }
        let device = candidates
            .into_iter()
            .find(|p| {
                p.signing_key
                    .verify_strict(challenge.as_bytes(), &signature)
                    .is_ok()
            })
            .ok_or(AuthenticateError::InvalidSignature)?;
        // Checked again, atomically: of two concurrent redemptions of one signed challenge, one wins.
        self.spend(&payload.n, payload.e, now_ms)?;
        let iat = now_ms / 1000;
        let claims = Claims {
            sub: payload.u,
            iat,
            exp: iat + self.token_ttl_secs,
            tenant_id: tenant.to_string(),
            device_signing_key: Some(device.signing_pem.clone()),
        };
        Ok(sign_token(&claims, &self.derived_key("token", tenant)))
    }

    fn is_spent(&self, nonce: &str) -> bool {
        self.redeemed
            .lock()
            .expect("redeemed set")
            .contains_key(nonce)
    }

    /// Remembers a redeemed challenge until it expires. Only valid signatures get here, so the
    /// memory is bounded by successful logins within a challenge lifetime.
    fn spend(&self, nonce: &str, expires: i64, now_ms: i64) -> Result<(), AuthenticateError> {
        let mut redeemed = self.redeemed.lock().expect("redeemed set");
        if redeemed.contains_key(nonce) {
            return Err(AuthenticateError::AlreadyUsed);
        }
        if redeemed.len() >= self.max_redeemed {
            redeemed.retain(|_, exp| *exp >= now_ms);
            if redeemed.len() >= self.max_redeemed {
                // Fail closed: forgetting a spent challenge would allow its replay.
                return Err(AuthenticateError::Busy);
            }
        }
        redeemed.insert(nonce.to_string(), expires);
        Ok(())
    }

    /// Validates a bearer token against the current directory (spec §2.5): signature, `exp`, tenant,
    /// and the device key still active for the token's user.
    pub fn validate_token(
        &self,
        tenant: &str,
        directory: &TenantDirectory,
        token: &str,
        now_ms: i64,
    ) -> Option<std::sync::Arc<Principal>> {
        let claims = verify_token(token, &self.derived_key("token", tenant), now_ms / 1000)?;
        if claims.tenant_id != tenant {
            return None;
        }
        let principal = directory.active_by_signing_key(claims.device_signing_key.as_deref()?)?;
        principal
            .username
            .eq_ignore_ascii_case(&claims.sub)
            .then(|| principal.clone())
    }
}

/// Mints an HS256 JWT.
pub fn sign_token(claims: &Claims, key: &[u8]) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(key),
    )
    .expect("HS256 signing cannot fail")
}

/// Verifies an HS256 JWT (any other `alg` is refused) and its `exp` against `now_secs`: valid
/// strictly before `exp`, with no leeway.
pub fn verify_token(token: &str, key: &[u8], now_secs: i64) -> Option<Claims> {
    let mut validation = Validation::new(Algorithm::HS256);
    // exp is checked below against the caller's clock, so it can be tested deterministically.
    validation.validate_exp = false;
    validation.required_spec_claims.clear();
    let data =
        jsonwebtoken::decode::<Claims>(token, &DecodingKey::from_secret(key), &validation).ok()?;
    // `exp` is the first second at which the token is no longer valid (RFC 7519 §4.1.4).
    (now_secs < data.claims.exp).then_some(data.claims)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::directory::{Directory, DirectoryFile, TenantFile, UserEntry};
    use crate::testdata;
    use ed25519_dalek::pkcs8::DecodePrivateKey;
    use ed25519_dalek::{Signer, SigningKey};

    fn user(name: &str, username: &str, revoked: bool) -> (UserEntry, SigningKey) {
        let keys = testdata::load("keys.json");
        let id = &keys["identities"][name];
        (
            UserEntry {
                username: username.into(),
                signing_public_key: id["signingPublicKey"].as_str().unwrap().into(),
                encryption_public_key: id["encryptionPublicKey"].as_str().unwrap().into(),
                revoked,
            },
            SigningKey::from_pkcs8_pem(id["signingPrivateKeyPkcs8"].as_str().unwrap()).unwrap(),
        )
    }

    fn directory(users: Vec<UserEntry>) -> Directory {
        let mut file = DirectoryFile::default();
        file.tenants.insert(
            "acme".into(),
            TenantFile {
                users,
                ..Default::default()
            },
        );
        Directory::from_file(&file).unwrap()
    }

    fn service() -> AuthService {
        AuthService::new(
            b"shared-secret-of-the-node-set".to_vec(),
            &Default::default(),
        )
    }

    fn sign(key: &SigningKey, challenge: &str) -> String {
        b64::encode(&key.sign(challenge.as_bytes()).to_bytes())
    }

    #[test]
    fn reference_challenge_signature_vector() {
        let doc = testdata::load("auth.json");
        let v = &doc["challengeSignature"];
        let (_, alice) = user("alice", "a", false);
        assert_eq!(
            sign(&alice, v["challenge"].as_str().unwrap()),
            v["signatureBase64"].as_str().unwrap()
        );
    }

    #[test]
    fn reference_jwt_with_known_secret() {
        let doc = testdata::load("auth.json");
        let v = &doc["jwtKnownSecret"];
        let secret = hex::decode(v["secretHex"].as_str().unwrap()).unwrap();
        let now = v["nowMs"].as_i64().unwrap() / 1000;
        let token = v["token"].as_str().unwrap();
        let claims = verify_token(token, &secret, now).expect("valid at its time");
        assert_eq!(serde_json::to_value(&claims).unwrap(), v["payload"]);
        assert!(
            verify_token(token, &secret, claims.exp + 1).is_none(),
            "expired"
        );
        assert!(
            verify_token(token, &secret, claims.exp).is_none(),
            "no leeway: invalid from the second exp names"
        );
        assert!(verify_token(token, &secret, claims.exp - 1).is_some());
        assert!(verify_token(token, b"other", now).is_none(), "forged");
        // alg:none with the same payload is refused.
        let none = format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#),
            v["payloadB64"].as_str().unwrap()
        );
        assert!(verify_token(&none, &secret, now).is_none());
        // Our own token of the same claims verifies under the same rules.
        assert_eq!(
            verify_token(&sign_token(&claims, &secret), &secret, now),
            Some(claims)
        );
    }

    #[test]
    fn full_flow_replicas_single_use_expiry_and_revocation() {
        let (alice, alice_key) = user("alice", "CN=alice/O=acme", false);
        let (bob, bob_key) = user("bob", "CN=bob/O=acme", false);
        let dir = directory(vec![alice.clone(), bob.clone()]);
        let t = dir.tenant("acme").unwrap();
        let (a, b) = (service(), service()); // two replicas, one secret
        let now = 1_800_000_000_000;

        let c = a
            .issue_challenge(
                "acme",
                t,
                Some("cn=alice/o=acme"),
                Some(&alice.signing_public_key),
                now,
            )
            .unwrap();
        let token = b
            .authenticate("acme", t, &c, &sign(&alice_key, &c), now + 1000)
            .expect("other replica accepts");
        assert_eq!(
            b.authenticate("acme", t, &c, &sign(&alice_key, &c), now + 1000),
            Err(AuthenticateError::AlreadyUsed)
        );
        let p = a
            .validate_token("acme", t, &token, now + 2000)
            .expect("token valid on the issuing replica too");
        assert_eq!(p.username, "CN=alice/O=acme");
        assert!(
            a.validate_token("other", t, &token, now).is_none(),
            "tenant-bound"
        );
        assert!(
            a.validate_token("acme", t, &token, now + 3_601_000 + 1000)
                .is_none(),
            "expires"
        );

        // Wrong signer: refused, and the challenge is not spent by it — its owner still logs in
        // with it, once.
        let c = a
            .issue_challenge("acme", t, None, Some(&alice.signing_public_key), now)
            .unwrap();
        assert_eq!(
            a.authenticate("acme", t, &c, &sign(&bob_key, &c), now),
            Err(AuthenticateError::InvalidSignature)
        );
        assert_eq!(
            a.authenticate("acme", t, &c, "not base64!", now),
            Err(AuthenticateError::InvalidSignature)
        );
        assert!(a
            .authenticate("acme", t, &c, &sign(&alice_key, &c), now)
            .is_ok());
        assert_eq!(
            a.authenticate("acme", t, &c, &sign(&alice_key, &c), now),
            Err(AuthenticateError::AlreadyUsed)
        );

        // Expired and tampered challenges.
        let c = a
            .issue_challenge("acme", t, Some("CN=alice/O=acme"), None, now)
            .unwrap();
        assert_eq!(
            a.authenticate("acme", t, &c, &sign(&alice_key, &c), now + 301_000),
            Err(AuthenticateError::Expired)
        );
        let forged = c.replacen("v1.", "v1.x", 1);
        assert_eq!(
            a.authenticate("acme", t, &forged, &sign(&alice_key, &forged), now),
            Err(AuthenticateError::NotFound)
        );

        // Challenge errors.
        assert_eq!(
            a.issue_challenge("acme", t, Some("nobody"), None, now),
            Err(ChallengeError::UnknownUser("nobody".into()))
        );
        assert_eq!(
            a.issue_challenge(
                "acme",
                t,
                Some("CN=alice/O=acme"),
                Some(&bob.signing_public_key),
                now
            ),
            Err(ChallengeError::UnknownDeviceKey("CN=alice/O=acme".into()))
        );
        assert_eq!(
            a.issue_challenge("acme", t, None, None, now),
            Err(ChallengeError::NothingGiven)
        );

        // Revocation: the same token stops working against the new directory.
        let (mut revoked_alice, _) = user("alice", "CN=alice/O=acme", true);
        revoked_alice.revoked = true;
        let dir2 = directory(vec![revoked_alice, bob]);
        let t2 = dir2.tenant("acme").unwrap();
        assert!(a.validate_token("acme", t2, &token, now + 2000).is_none());
        assert_eq!(
            a.issue_challenge("acme", t2, Some("CN=alice/O=acme"), None, now),
            Err(ChallengeError::Revoked("CN=alice/O=acme".into()))
        );
    }

    /// A service whose replay memory has room for one redeemed challenge.
    fn service_remembering_one() -> AuthService {
        let config = crate::config::AuthConfig {
            max_outstanding_challenges: 1,
            ..Default::default()
        };
        AuthService::new(b"k".to_vec(), &config)
    }

    /// Bad signatures, however many, fill nothing: the replay memory (here room for one) still
    /// takes the valid login after them.
    #[test]
    fn bad_signatures_do_not_consume_the_replay_memory() {
        let (alice, alice_key) = user("alice", "alice", false);
        let (_, bob_key) = user("bob", "bob", false);
        let dir = directory(vec![alice]);
        let t = dir.tenant("acme").unwrap();
        let s = service_remembering_one();
        let now = 1_800_000_000_000;
        for _ in 0..50 {
            let c = s
                .issue_challenge("acme", t, Some("alice"), None, now)
                .unwrap();
            assert_eq!(
                s.authenticate("acme", t, &c, &sign(&bob_key, &c), now),
                Err(AuthenticateError::InvalidSignature)
            );
        }
        let c = s
            .issue_challenge("acme", t, Some("alice"), None, now)
            .unwrap();
        assert!(s
            .authenticate("acme", t, &c, &sign(&alice_key, &c), now)
            .is_ok());
    }

    #[test]
    fn the_replay_cache_fails_closed_when_full() {
        let (alice, alice_key) = user("alice", "alice", false);
        let dir = directory(vec![alice]);
        let t = dir.tenant("acme").unwrap();
        let s = service_remembering_one();
        let now = 1_800_000_000_000;
        let c1 = s
            .issue_challenge("acme", t, Some("alice"), None, now)
            .unwrap();
        let c2 = s
            .issue_challenge("acme", t, Some("alice"), None, now)
            .unwrap();
        assert!(s
            .authenticate("acme", t, &c1, &sign(&alice_key, &c1), now)
            .is_ok());
        assert_eq!(
            s.authenticate("acme", t, &c2, &sign(&alice_key, &c2), now),
            Err(AuthenticateError::Busy)
        );
        // After the first challenge expired, room is made again.
        let c3 = s
            .issue_challenge("acme", t, Some("alice"), None, now + 400_000)
            .unwrap();
        assert!(s
            .authenticate("acme", t, &c3, &sign(&alice_key, &c3), now + 400_000)
            .is_ok());
    }
}
