//! An S3-compatible server on loopback: moto's `moto_server` (PyPI `moto[server]`, which
//! `ci/install-deps.sh` installs into the project's venv from `ci/requirements-s3.txt`).
//! It speaks the real S3 wire protocol (SigV4 requests, multipart uploads, listings), keeps
//! objects in memory, and accepts any credentials.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{Result, bail};

use crate::http::{http_get, http_put};
use crate::ports::free_port;
use crate::process::{ChildGuard, STARTUP_TIMEOUT, Workdir, find_binary};

const NAME: &str = "moto-s3";
const BINARY_ENV: &str = "DR_MOTO_SERVER_BIN";

/// Credentials the server accepts (it accepts any); a client must still sign with some.
pub const ACCESS_KEY_ID: &str = "dr-test-access-key";
pub const SECRET_ACCESS_KEY: &str = "dr-test-secret-key";
pub const REGION: &str = "us-east-1";

/// A running S3 server on `127.0.0.1`, stopped by PID on drop.
pub struct S3Server {
    // Fields drop in order: the process stops before its directory is removed.
    guard: Option<ChildGuard>,
    port: u16,
    bin: PathBuf,
    workdir: Workdir,
}

impl S3Server {
    /// Starts one on a free port in a temporary directory and waits until it answers.
    pub fn start() -> Result<Self> {
        let bin = moto_binary()?;
        let workdir = Workdir::temp("dr-s3-")?;
        let mut server = Self {
            guard: None,
            port: free_port(),
            bin,
            workdir,
        };
        server.start_again()?;
        Ok(server)
    }

    /// Starts the stopped server again on the same port (empty: moto keeps nothing).
    pub fn start_again(&mut self) -> Result<()> {
        if self.guard.is_some() {
            bail!("{NAME} is already running");
        }
        let mut cmd = Command::new(&self.bin);
        cmd.args(["-H", "127.0.0.1", "-p", &self.port.to_string()])
            .current_dir(self.workdir.path());
        let guard = ChildGuard::spawn(
            NAME,
            cmd,
            &self.workdir.path().join(format!("{NAME}.log")),
            false,
        )?;
        // The service list answers once the server routes requests.
        guard.wait_http_ok(&format!("{}/moto-api/", self.url()), STARTUP_TIMEOUT)?;
        self.guard = Some(guard);
        Ok(())
    }

    /// Stops the process (by PID); the port stays this server's for [`Self::start_again`].
    pub fn stop(&mut self) -> Result<()> {
        if let Some(mut guard) = self.guard.take() {
            guard.set_stop_timeout(Duration::from_secs(5));
            guard.stop()?;
        }
        Ok(())
    }

    /// Creates a bucket (moto needs no signature for it).
    pub fn create_bucket(&self, bucket: &str) -> Result<()> {
        let (status, body) = http_put(&format!("{}/{bucket}", self.url()), "text/plain", b"")?;
        if status != 200 {
            bail!("creating bucket {bucket}: status {status}: {body}");
        }
        Ok(())
    }

    /// The keys in `bucket` (the raw ListObjects answer), for checks from outside the client.
    pub fn list_raw(&self, bucket: &str) -> Result<String> {
        let (status, body) = http_get(&format!("{}/{bucket}", self.url()))?;
        if status != 200 {
            bail!("listing bucket {bucket}: status {status}: {body}");
        }
        Ok(body)
    }

    /// `http://127.0.0.1:PORT`, the endpoint a client is pointed at.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The PID while running.
    pub fn pid(&self) -> Option<u32> {
        self.guard.as_ref().map(ChildGuard::pid)
    }

    /// The environment an S3 client (object_store's `from_env`, the AWS CLI) needs to
    /// reach this server.
    pub fn client_env(&self) -> Vec<(String, String)> {
        [
            ("AWS_ENDPOINT_URL", self.url()),
            ("AWS_ALLOW_HTTP", "true".to_owned()),
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY_ID.to_owned()),
            ("AWS_SECRET_ACCESS_KEY", SECRET_ACCESS_KEY.to_owned()),
            ("AWS_REGION", REGION.to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }
}

/// `$DR_MOTO_SERVER_BIN`, else `moto_server` on `PATH`, else in the project's venv
/// (`$DR_VENV` or `target/venv`, where ci/install-deps.sh puts it).
fn moto_binary() -> Result<PathBuf> {
    if let Ok(found) = find_binary(BINARY_ENV, &["moto_server"], "moto[server]") {
        return Ok(found);
    }
    if std::env::var_os(BINARY_ENV).is_some_and(|v| !v.is_empty()) {
        // A wrong explicit path is an error, not a reason to look elsewhere.
        return find_binary(BINARY_ENV, &["moto_server"], "moto[server]");
    }
    let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let venvs = std::env::var_os("DR_VENV")
        .map(PathBuf::from)
        .into_iter()
        .chain([workspace.join("target/venv")]);
    for venv in venvs {
        let candidate = venv.join("bin/moto_server");
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!(
        "moto_server not found on PATH nor in the project's venv; run ci/install-deps.sh \
         (it installs ci/requirements-s3.txt) or set {BINARY_ENV}"
    )
}
