//! Passwords: the policy, and argon2id hashing off the async threads.

use argon2::password_hash::{
    PasswordHash, PasswordHasher, PasswordVerifier, SaltString, rand_core::OsRng,
};
use argon2::{Algorithm, Argon2, Params, Version};
use flashmall_mesh::ApiError;

/// Longest accepted password, in characters (bounds the hashing work).
pub const MAX_PASSWORD: usize = 128;

/// Checks a new password against the policy.
pub fn check_policy(password: &str, email: &str, min_length: usize) -> Result<(), ApiError> {
    let chars = password.chars().count();
    if chars < min_length || chars > MAX_PASSWORD {
        return Err(ApiError::invalid(format!(
            "the password must be {min_length} to {MAX_PASSWORD} characters long"
        )));
    }
    if password.trim().is_empty() || password.chars().all(|c| password.starts_with(c)) {
        return Err(ApiError::invalid(
            "the password must not be one character repeated",
        ));
    }
    if password.eq_ignore_ascii_case(email)
        || email
            .split('@')
            .next()
            .is_some_and(|local| password.eq_ignore_ascii_case(local))
    {
        return Err(ApiError::invalid(
            "the password must not be the email address",
        ));
    }
    Ok(())
}

/// How long a password check waits for a free hashing slot before the
/// service answers 503 (argon2id's memory cost bounds how many can run).
const SLOT_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Hashes and verifies passwords with argon2id.
#[derive(Clone)]
pub struct Hasher {
    params: Params,
    /// Bounds the hashes in flight: each holds `memory_kib` of memory.
    slots: std::sync::Arc<tokio::sync::Semaphore>,
    /// A hash no password matches, verified for unknown accounts so a login
    /// takes as long whether or not the account exists.
    decoy: String,
}

impl Hasher {
    pub fn new(memory_kib: u32, iterations: u32) -> Result<Hasher, String> {
        let params = Params::new(memory_kib, iterations, 1, None)
            .map_err(|e| format!("argon2 parameters: {e}"))?;
        let decoy = hash_with(&params, &uuid::Uuid::new_v4().to_string()).map_err(|e| e.message)?;
        let parallel = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2);
        Ok(Hasher {
            params,
            slots: std::sync::Arc::new(tokio::sync::Semaphore::new(parallel * 2)),
            decoy,
        })
    }

    async fn slot(&self) -> Result<tokio::sync::OwnedSemaphorePermit, ApiError> {
        tokio::time::timeout(
            SLOT_WAIT,
            std::sync::Arc::clone(&self.slots).acquire_owned(),
        )
        .await
        .ok()
        .and_then(Result::ok)
        .ok_or_else(|| {
            ApiError::unavailable("the service is busy checking passwords; retry shortly")
        })
    }

    pub async fn hash(&self, password: &str) -> Result<String, ApiError> {
        let _slot = self.slot().await?;
        let params = self.params.clone();
        let password = password.to_owned();
        tokio::task::spawn_blocking(move || hash_with(&params, &password))
            .await
            .map_err(|e| ApiError::internal(format!("hashing failed: {e}")))?
    }

    /// True when `password` matches `hash` (`None`: an unknown account).
    pub async fn verify(&self, password: &str, hash: Option<&str>) -> Result<bool, ApiError> {
        let _slot = self.slot().await?;
        let known = hash.is_some();
        let hash = hash.unwrap_or(&self.decoy).to_owned();
        let password = password.to_owned();
        let params = self.params.clone();
        let matched = tokio::task::spawn_blocking(move || {
            let Ok(parsed) = PasswordHash::new(&hash) else {
                return false;
            };
            argon(&params)
                .verify_password(password.as_bytes(), &parsed)
                .is_ok()
        })
        .await
        .unwrap_or(false);
        Ok(known && matched)
    }
}

fn argon(params: &Params) -> Argon2<'static> {
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone())
}

fn hash_with(params: &Params, password: &str) -> Result<String, ApiError> {
    let salt = SaltString::generate(&mut OsRng);
    argon(params)
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| ApiError::internal(format!("hashing failed: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_refuses_weak_passwords() {
        assert!(check_policy("correct horse battery", "a@b.c", 10).is_ok());
        assert!(check_policy("short", "a@b.c", 10).is_err());
        assert!(check_policy("aaaaaaaaaaaa", "a@b.c", 10).is_err());
        assert!(check_policy("alice@example.com", "alice@example.com", 10).is_err());
        assert!(check_policy(&"x1".repeat(100), "a@b.c", 10).is_err());
    }

    #[tokio::test]
    async fn hashes_verify_and_unknown_accounts_never_match() {
        let h = Hasher::new(64, 1).unwrap();
        let hash = h.hash("correct horse battery").await.unwrap();
        assert!(hash.starts_with("$argon2id$"));
        assert!(
            h.verify("correct horse battery", Some(&hash))
                .await
                .unwrap()
        );
        assert!(!h.verify("wrong horse battery", Some(&hash)).await.unwrap());
        assert!(!h.verify("correct horse battery", None).await.unwrap());
    }
}
