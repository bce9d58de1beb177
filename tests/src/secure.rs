//! Credentials and certificates for tests of authentication and TLS, made at test time.

use std::path::{Path, PathBuf};

/// A `--config` file with one user, and a self-signed certificate for `localhost`/`127.0.0.1`.
#[derive(Debug, Clone)]
pub struct Security {
    pub config: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub user: String,
    pub password: String,
}

/// Signs tokens in every test cluster; real deployments put their own secret in the config.
const TOKEN_SECRET: &str = "quiver-test-token-secret-0123456789abcdef";

impl Security {
    /// Writes the files into `dir`. The password hash uses few PBKDF2 rounds to keep tests fast.
    pub fn create(dir: &Path) -> Self {
        let user = "analyst".to_string();
        let password = "s3cret pass: with colon".to_string();
        let hash = quiver_server::hash_password(&password, 1_000).expect("hash");
        let config = dir.join("quiver.toml");
        std::fs::write(
            &config,
            format!(
                "[auth]\ntoken_secret = \"{TOKEN_SECRET}\"\ntoken_ttl_secs = 600\n\n[[auth.users]]\nname = \"{user}\"\npassword_hash = \"{hash}\"\n"
            ),
        )
        .expect("write config");
        let certified = rcgen::generate_simple_self_signed(vec![
            "localhost".to_string(),
            "127.0.0.1".to_string(),
        ])
        .expect("self-signed certificate");
        let cert = dir.join("server.pem");
        let key = dir.join("server.key");
        std::fs::write(&cert, certified.cert.pem()).expect("write cert");
        std::fs::write(&key, certified.signing_key.serialize_pem()).expect("write key");
        Self {
            config,
            cert,
            key,
            user,
            password,
        }
    }

    /// Coordinator/serve flags: auth always, TLS when `tls`.
    pub fn args(&self, tls: bool) -> Vec<String> {
        let mut args = vec!["--config".to_string(), self.config.display().to_string()];
        if tls {
            args.extend([
                "--tls-cert".to_string(),
                self.cert.display().to_string(),
                "--tls-key".to_string(),
                self.key.display().to_string(),
            ]);
        }
        args
    }
}
