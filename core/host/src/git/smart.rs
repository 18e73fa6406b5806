//! git's smart-HTTP services on a bare repo: the ref advertisement, upload-pack (request and
//! answer streamed) and receive-pack (buffered answer), each `--stateless-rpc`.

use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use futures_util::io::{AsyncRead, AsyncWrite};

use super::limits::Priority;
use super::pktline;
use super::process::{self, git, GitOutput, Watched};
use crate::runtime::Runtime;

/// The two smart-HTTP services.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Service {
    UploadPack,
    ReceivePack,
}

impl Service {
    /// `git-upload-pack` / `git-receive-pack`, as in URLs and `?service=`.
    pub fn from_name(name: &str) -> Option<Service> {
        match name {
            "git-upload-pack" => Some(Service::UploadPack),
            "git-receive-pack" => Some(Service::ReceivePack),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Service::UploadPack => "git-upload-pack",
            Service::ReceivePack => "git-receive-pack",
        }
    }

    fn subcommand(self) -> &'static str {
        &self.name()["git-".len()..]
    }

    pub fn advertisement_type(self) -> &'static str {
        match self {
            Service::UploadPack => "application/x-git-upload-pack-advertisement",
            Service::ReceivePack => "application/x-git-receive-pack-advertisement",
        }
    }

    pub fn result_type(self) -> &'static str {
        match self {
            Service::UploadPack => "application/x-git-upload-pack-result",
            Service::ReceivePack => "application/x-git-receive-pack-result",
        }
    }
}

/// Most bytes kept from a ref advertisement or a receive-pack answer.
const ANSWER_CAP: usize = 64 * 1024 * 1024;

/// True for a `Git-Protocol` header value we pass on (`version=2`, `key=value:key`...).
pub fn is_sane_git_protocol(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= 256
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"=:._-".contains(&b))
}

/// `git [-c <config>].. <service> --stateless-rpc <repo>`.
fn service_command(
    service: Service,
    repo: &Path,
    git_protocol: Option<&str>,
    config: &[&str],
) -> std::process::Command {
    let mut command = git(None);
    for setting in config {
        command.arg("-c").arg(setting);
    }
    if service == Service::UploadPack {
        // Also set in each repo's config at creation; repeated here so a repo made by other
        // means still serves GRASP's fetch-by-id and partial clones.
        command.args(["-c", "uploadpack.allowTipSHA1InWant=true"]);
        command.args(["-c", "uploadpack.allowReachableSHA1InWant=true"]);
        command.args(["-c", "uploadpack.allowFilter=true"]);
    }
    command.arg(service.subcommand()).arg("--stateless-rpc");
    if let Some(protocol) = git_protocol.filter(|p| is_sane_git_protocol(p)) {
        command.env("GIT_PROTOCOL", protocol);
    }
    command.arg(repo);
    command
}

fn wants_v2(git_protocol: Option<&str>) -> bool {
    git_protocol.is_some_and(|p| p.split(':').any(|kv| kv == "version=2"))
}

/// The `info/refs?service=` body: `# service=...` preamble (except for protocol v2, as git
/// http-backend does) and git's `--advertise-refs` output.
pub async fn advertise(
    runtime: &dyn Runtime,
    repo: &Path,
    service: Service,
    git_protocol: Option<&str>,
) -> io::Result<Vec<u8>> {
    let mut command = service_command(service, repo, git_protocol, &[]);
    command.arg("--advertise-refs");
    let out = process::run(runtime, command, &b""[..], None, ANSWER_CAP).await?;
    if !out.success() || out.truncated {
        return Err(io::Error::other(format!(
            "git {} --advertise-refs failed: {}",
            service.subcommand(),
            out.stderr_tail()
        )));
    }
    let mut body = Vec::with_capacity(out.stdout.len() + 40);
    if !(service == Service::UploadPack && wants_v2(git_protocol)) {
        pktline::write(
            &mut body,
            format!("# service={}\n", service.name()).as_bytes(),
        );
        pktline::write_flush(&mut body);
    }
    body.extend_from_slice(&out.stdout);
    Ok(body)
}

/// A ref advertisement without refs, as git's for an empty repository (v0; no side-band), for
/// a repository whose refs are not to be shown: a push to it still reaches the push decision,
/// which refuses each ref with its reason.
pub fn advertise_no_refs(service: Service) -> Vec<u8> {
    let mut body = Vec::new();
    pktline::write(
        &mut body,
        format!("# service={}\n", service.name()).as_bytes(),
    );
    pktline::write_flush(&mut body);
    let zero = "0".repeat(40);
    let line = format!("{zero} capabilities^{{}}\0report-status delete-refs ofs-delta\n");
    pktline::write(&mut body, line.as_bytes());
    pktline::write_flush(&mut body);
    body
}

/// A running upload-pack whose stdout is the response body. Dropping it kills git.
pub struct UploadPack {
    /// Where the request goes, as it arrives ([`process::feed`]).
    pub stdin: Box<dyn AsyncWrite + Send + Unpin>,
    pub stdout: Box<dyn AsyncRead + Send + Unpin>,
    pub process: Watched,
}

/// Starts `git upload-pack --stateless-rpc` on `repo`; stderr is logged. It is killed at
/// `deadline` (then `on_kill` runs), even if its client stopped reading; `held` is released
/// when it ends.
pub fn upload_pack(
    runtime: &Arc<dyn Runtime>,
    repo: &Path,
    git_protocol: Option<&str>,
    priority: Priority,
    held: Box<dyn Send>,
    deadline: Instant,
    on_kill: impl FnOnce() + Send + 'static,
) -> io::Result<UploadPack> {
    let mut command = service_command(Service::UploadPack, repo, git_protocol, &[]);
    lower_priority(&mut command, priority);
    let mut child = runtime.spawn_process(command)?;
    let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
        return Err(io::Error::other("upload-pack has no stdin or stdout"));
    };
    let stderr = child.stderr.take();
    let repo_name = repo.display().to_string();
    runtime.spawn(Box::pin(async move {
        let (text, _) = process::read_capped(stderr, 16 * 1024).await;
        if !text.is_empty() {
            tracing::debug!(repo = %repo_name, stderr = %String::from_utf8_lossy(&text).trim(), "upload-pack");
        }
    }));
    Ok(UploadPack {
        stdin,
        stdout,
        process: Watched::new(runtime, child.process, held, deadline, on_kill),
    })
}

/// Runs `command` (and every process it starts) at `priority`.
#[cfg(unix)]
fn lower_priority(command: &mut std::process::Command, priority: Priority) {
    use std::os::unix::process::CommandExt;
    if priority == Priority::Nice(0) {
        return;
    }
    // SAFETY: runs in the forked child before exec; setpriority and sched_setscheduler are
    // async-signal-safe and the closure only reads a copied value.
    unsafe {
        command.pre_exec(move || {
            let nice = match priority {
                Priority::Nice(nice) => nice,
                Priority::Idle => {
                    if idle_scheduling() {
                        return Ok(());
                    }
                    19
                }
            };
            if libc::setpriority(libc::PRIO_PROCESS, 0, nice) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Moves the calling process to `SCHED_IDLE`: it runs only on CPU time no other process
/// wants, and the processes it starts inherit that. Any process may lower itself to it.
///
/// # Safety
/// Only between fork and exec, or on the calling thread when that is meant.
#[cfg(target_os = "linux")]
unsafe fn idle_scheduling() -> bool {
    let param = libc::sched_param { sched_priority: 0 };
    libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) == 0
}

#[cfg(all(unix, not(target_os = "linux")))]
unsafe fn idle_scheduling() -> bool {
    false
}

/// Not lowered off unix.
#[cfg(not(unix))]
fn lower_priority(_command: &mut std::process::Command, _priority: Priority) {}

/// A push at least this large keeps its pack as it is (see [`receive_pack`]).
const KEEP_PACK_BYTES: u64 = 1024 * 1024;

/// Runs `git receive-pack --stateless-rpc` on `repo` with everything read from `input` (the
/// whole request, commands included) and returns its answer; it is killed at `deadline`
/// ([`GitOutput::timed_out`]). An error reading `input` is reported in
/// [`GitOutput::input_error`].
pub async fn receive_pack(
    runtime: &dyn Runtime,
    repo: &Path,
    git_protocol: Option<&str>,
    input: impl AsyncRead + Unpin,
    input_bytes: u64,
    deadline: Instant,
) -> io::Result<GitOutput> {
    // git explodes a pack of few objects into loose ones, which every clone must then
    // compress again: a few large files pushed once would cost CPU on every clone (and clones
    // that are never read would make the server compress them over and over). Kept as a
    // pack, they are copied as they are. Small pushes stay loose: indexing a pack costs more
    // than writing a few objects.
    let keep_pack: &[&str] = if input_bytes >= KEEP_PACK_BYTES {
        &["receive.unpackLimit=1"]
    } else {
        &[]
    };
    let command = service_command(Service::ReceivePack, repo, git_protocol, keep_pack);
    process::run(runtime, command, input, Some(deadline), ANSWER_CAP).await
}
