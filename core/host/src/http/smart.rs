//! git smart-HTTP handlers: `info/refs`, `git-upload-pack`, `git-receive-pack`.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use futures_util::future::{self, Either};
use futures_util::io::AsyncReadExt;
use futures_util::{StreamExt, TryStreamExt};
use graspd_core::RepoKey;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};

use super::body::{self, full, BodyError, ProcessBody, RequestBody, ResponseBody};
use super::spool::{self, SpoolError};
use super::{set_type, status, Site};
use crate::git::process as git_process;
use crate::git::receive::{self, CommandParser, PushCommands};
use crate::git::smart::{self as git_smart, Service, UploadPack};
use crate::git::{Busy, Git, GitRequestSlot};
use crate::refusals::Limit;

/// Most bytes of a push's command list (before the pack).
const MAX_COMMAND_BYTES: usize = 4 * 1024 * 1024;

/// Seconds a client refused for the caps on git requests is asked to wait.
const RETRY_AFTER_SECS: &str = "5";

/// Said about accepted refs when another ref in the same push was refused.
const OTHER_REF_REJECTED: &str = "another ref in this push was rejected";

fn git_protocol(request: &Request<Incoming>) -> Option<String> {
    let value = request.headers().get("git-protocol")?.to_str().ok()?;
    git_smart::is_sane_git_protocol(value).then(|| value.to_owned())
}

fn no_cache(response: &mut Response<ResponseBody>) {
    let headers = response.headers_mut();
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache, max-age=0, must-revalidate"),
    );
    headers.insert(
        header::EXPIRES,
        HeaderValue::from_static("Fri, 01 Jan 1980 00:00:00 GMT"),
    );
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
}

fn not_found(repo: &RepoKey) -> Response<ResponseBody> {
    status(
        StatusCode::NOT_FOUND,
        &format!("repository {} not found\n", repo.identifier),
    )
}

/// Where `repo`'s git requests are served from, or the answer when it is not here.
async fn served_path(site: &Site, repo: &RepoKey) -> Result<PathBuf, Response<ResponseBody>> {
    match site.git.serving_path(repo).await {
        Ok(Some(path)) => Ok(path),
        Ok(None) => Err(not_found(repo)),
        Err(e) => Err(git_failure("preparing the repository failed", e)),
    }
}

fn git_failure(what: &str, error: impl std::fmt::Display) -> Response<ResponseBody> {
    tracing::warn!(%error, "{what}");
    status(StatusCode::INTERNAL_SERVER_ERROR, &format!("{what}\n"))
}

/// The answer to a body that broke a limit or could not be read; limits are counted and
/// logged.
fn body_error(site: &Site, repo: &RepoKey, error: &BodyError) -> Response<ResponseBody> {
    let code = match error {
        BodyError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        BodyError::Idle { .. } | BodyError::TooSlow { .. } => StatusCode::REQUEST_TIMEOUT,
        BodyError::BadGzip(_) | BodyError::Read(_) => StatusCode::BAD_REQUEST,
    };
    refuse_body(&site.git, repo, error);
    status(code, &format!("{error}\n"))
}

/// Counts and logs a body that broke a limit (a malformed or broken one is no refusal).
fn refuse_body(git: &Git, repo: &RepoKey, error: &BodyError) {
    let limit = match error {
        BodyError::TooLarge { .. } => Limit::GitBodyTooLarge,
        BodyError::Idle { .. } | BodyError::TooSlow { .. } => Limit::GitBodyTimeout,
        BodyError::BadGzip(_) | BodyError::Read(_) => return,
    };
    git.refuse(
        limit,
        &format_args!("git request for {repo} refused: {error}"),
    );
}

/// The answer when the caps on git requests in flight leave no room: 503 (the server) or 429
/// (this address), both with `Retry-After`.
fn busy(site: &Site, repo: &RepoKey, client: IpAddr, busy: Busy) -> Response<ResponseBody> {
    let (code, limit) = match busy {
        Busy::Server { .. } => (StatusCode::SERVICE_UNAVAILABLE, Limit::GitRequestsTotal),
        Busy::Address { .. } => (StatusCode::TOO_MANY_REQUESTS, Limit::GitRequestsPerAddress),
    };
    site.git.refuse(
        limit,
        &format_args!("git request for {repo} from {client} refused: {busy}"),
    );
    let mut response = status(code, &format!("{busy}\n"));
    response.headers_mut().insert(
        header::RETRY_AFTER,
        HeaderValue::from_static(RETRY_AFTER_SECS),
    );
    response
}

/// 403 for a clone or fetch of a repository the operator's policy denies. A push goes on, to
/// be refused per ref with the reason git shows (`! [remote rejected] <ref> (<reason>)`).
fn refused_fetch(site: &Site, repo: &RepoKey, service: Service) -> Option<Response<ResponseBody>> {
    if service != Service::UploadPack {
        return None;
    }
    let reason = site.handlers.push.refuses_fetch(repo)?;
    Some(forbidden(site, repo, reason))
}

fn forbidden(site: &Site, repo: &RepoKey, reason: &str) -> Response<ResponseBody> {
    site.git.refuse(
        Limit::PolicyRepo,
        &format_args!("git fetch of {repo} refused: {reason}"),
    );
    status(StatusCode::FORBIDDEN, &format!("{reason}\n"))
}

pub(super) async fn info_refs(
    site: &Site,
    request: Request<Incoming>,
    repo: RepoKey,
    client: IpAddr,
) -> Response<ResponseBody> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return status(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
    }
    let service = request
        .uri()
        .query()
        .unwrap_or_default()
        .split('&')
        .find_map(|pair| pair.strip_prefix("service="))
        .and_then(Service::from_name);
    let Some(service) = service else {
        return status(
            StatusCode::FORBIDDEN,
            "only smart HTTP is served: use ?service=git-upload-pack or ?service=git-receive-pack\n",
        );
    };
    let denied = site.handlers.push.refuses_fetch(&repo);
    if let (Some(reason), Service::UploadPack) = (denied, service) {
        return forbidden(site, &repo, reason);
    }
    let path = match served_path(site, &repo).await {
        Ok(path) => path,
        Err(response) => return response,
    };
    let body = if request.method() == Method::HEAD {
        full(Bytes::new())
    } else if denied.is_some() {
        // A push to a denied repository is refused per ref; its refs are not shown meanwhile.
        full(git_smart::advertise_no_refs(service))
    } else {
        let _slot = match site.git.start_request(client) {
            Ok(slot) => slot,
            Err(e) => return busy(site, &repo, client, e),
        };
        let protocol = git_protocol(&request);
        match git_smart::advertise(&**site.git.runtime(), &path, service, protocol.as_deref()).await
        {
            Ok(advertisement) => full(advertisement),
            Err(e) => return git_failure("listing the repository's refs failed", e),
        }
    };
    let mut response = Response::new(body);
    set_type(&mut response, service.advertisement_type());
    no_cache(&mut response);
    response
}

pub(super) async fn rpc(
    site: &Site,
    request: Request<Incoming>,
    repo: RepoKey,
    service: Service,
    client: IpAddr,
) -> Response<ResponseBody> {
    if request.method() != Method::POST {
        return status(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
    }
    if let Some(refused) = refused_fetch(site, &repo, service) {
        return answer_unread(site, request, refused);
    }
    let served = match served_path(site, &repo).await {
        Ok(path) => path,
        Err(response) => return response,
    };
    let slot = match site.git.start_request(client) {
        Ok(slot) => slot,
        Err(e) => return answer_unread(site, request, busy(site, &repo, client, e)),
    };
    let limit = match service {
        Service::UploadPack => site.body.max_upload_request_bytes,
        Service::ReceivePack => site.body.max_bytes,
    };
    let declared_length = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared_length.is_some_and(|len| len > limit) {
        let too_large = body_error(site, &repo, &BodyError::TooLarge { limit });
        return answer_unread(site, request, too_large);
    }
    let gzip = match request
        .headers()
        .get(header::CONTENT_ENCODING)
        .map(|v| v.as_bytes())
    {
        None | Some(b"identity") => false,
        Some(b"gzip" | b"x-gzip") => true,
        Some(_) => {
            let unsupported = status(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported Content-Encoding\n",
            );
            return answer_unread(site, request, unsupported);
        }
    };
    let protocol = git_protocol(&request);
    let body = RequestBody::new(
        site.git.runtime(),
        request.into_body(),
        gzip,
        limit,
        &site.body,
    );
    let mut response = match service {
        Service::UploadPack => {
            upload_pack(site, &repo, &served, protocol.as_deref(), body, slot).await
        }
        Service::ReceivePack => {
            let mut body = body;
            let response = receive_pack(site, &repo, protocol.as_deref(), &mut body).await;
            drop(slot);
            answered(site, body, response)
        }
    };
    if response.status() == StatusCode::OK {
        set_type(&mut response, service.result_type());
        no_cache(&mut response);
    }
    response
}

/// `response`, once the request's body was read as far as it will be: what the client is
/// still sending after an early answer (413, a refused push) is read and dropped in the
/// background; a client that stalled gets no more time.
fn answered(
    site: &Site,
    body: RequestBody,
    response: Response<ResponseBody>,
) -> Response<ResponseBody> {
    if response.status() != StatusCode::REQUEST_TIMEOUT {
        body.linger(site.git.runtime());
    }
    response
}

/// `response`, sent without reading the request's body: what the client is still sending is
/// read and dropped in the background, so it reads the answer instead of a connection reset.
fn answer_unread(
    site: &Site,
    request: Request<Incoming>,
    response: Response<ResponseBody>,
) -> Response<ResponseBody> {
    body::linger(site.git.runtime(), request.into_body());
    response
}

/// Bytes of upload-pack's answer read before the response starts.
const FIRST_ANSWER_READ: usize = 64 * 1024;

/// Runs upload-pack with the request streamed to it as it arrives (inflated in slices and
/// capped by the body limits as it goes, never held whole). The response starts when git
/// answers: a request that breaks a limit before then is answered 413/408 and git is killed;
/// one that breaks it later (git answered early) kills git, which cuts the answer short.
async fn upload_pack(
    site: &Site,
    repo: &RepoKey,
    path: &Path,
    protocol: Option<&str>,
    mut body: RequestBody,
    slot: GitRequestSlot,
) -> Response<ResponseBody> {
    let limits = site.git.limits();
    let deadline = site.git.runtime().now() + limits.process_timeout;
    let (git, name, secs) = (
        site.git.clone(),
        repo.to_string(),
        limits.process_timeout.as_secs(),
    );
    let on_kill = move || {
        git.refuse(
            Limit::GitProcessTimeout,
            &format_args!("git upload-pack for {name} ran past its limit of {secs} s; killed"),
        );
    };
    let priority = slot.upload_pack_priority(limits.upload_pack_nice);
    let run = git_smart::upload_pack(
        site.git.runtime(),
        path,
        protocol,
        priority,
        Box::new(slot),
        deadline,
        on_kill,
    );
    let UploadPack {
        stdin,
        mut stdout,
        process,
    } = match run {
        Ok(run) => run,
        Err(e) => {
            return answered(
                site,
                body,
                git_failure("starting git upload-pack failed", e),
            )
        }
    };
    let feed = Box::pin(async move {
        let error = git_process::feed(&mut (&mut body).into_async_read(), stdin).await;
        (error.map(|e| BodyError::from_io_error(&e)), body)
    });
    let mut first = vec![0u8; FIRST_ANSWER_READ];
    let (read, unfed) = match future::select(feed, stdout.read(&mut first)).await {
        Either::Left(((Some(error), body), _)) => {
            drop(process);
            return answered(site, body, body_error(site, repo, &error));
        }
        Either::Left(((None, body), read)) => {
            drop(read);
            // The whole request is with git (or git stopped reading it): its answer follows.
            body.linger(site.git.runtime());
            (stdout.read(&mut first).await, None)
        }
        Either::Right((read, feed)) => (read, Some(feed)),
    };
    let answered_bytes = match read {
        Ok(n) => n,
        Err(e) => return git_failure("reading git upload-pack's answer failed", e),
    };
    first.truncate(answered_bytes);
    if let Some(feed) = unfed {
        let (git, repo, kill) = (site.git.clone(), repo.clone(), process.kill_switch());
        site.git.runtime().spawn(Box::pin(async move {
            match feed.await {
                (Some(error), _) => {
                    kill.kill();
                    refuse_body(&git, &repo, &error);
                }
                (None, body) => body.linger(git.runtime()),
            }
        }));
    }
    Response::new(ProcessBody::new(stdout, process, first.into()).boxed_unsync())
}

/// Reads the push's command list (and whatever part of the pack came with it).
async fn read_commands(
    site: &Site,
    repo: &RepoKey,
    body: &mut RequestBody,
) -> Result<(PushCommands, Vec<u8>), Response<ResponseBody>> {
    let max_commands = site.git.limits().max_push_commands;
    let mut parser = CommandParser::new(max_commands);
    loop {
        let chunk = match body.next().await {
            Some(Ok(chunk)) => chunk,
            Some(Err(e)) => return Err(body_error(site, repo, &BodyError::from_io_error(&e))),
            None => {
                return Err(status(
                    StatusCode::BAD_REQUEST,
                    "push request ended before its command list\n",
                ))
            }
        };
        match parser.feed(&chunk) {
            Ok(Some(commands)) => return Ok((commands, parser.into_received())),
            Ok(None) => {}
            Err(e) => {
                if parser.commands() >= max_commands {
                    site.git.refuse(
                        Limit::GitTooManyCommands,
                        &format_args!(
                            "push to {repo} refused: more than {max_commands} ref updates"
                        ),
                    );
                }
                return Err(status(StatusCode::BAD_REQUEST, &format!("{e}\n")));
            }
        }
        if parser.received().len() > MAX_COMMAND_BYTES {
            return Err(status(
                StatusCode::BAD_REQUEST,
                "push command list too long\n",
            ));
        }
    }
}

async fn receive_pack(
    site: &Site,
    repo: &RepoKey,
    protocol: Option<&str>,
    body: &mut RequestBody,
) -> Response<ResponseBody> {
    let (commands, head) = match read_commands(site, repo, body).await {
        Ok(parsed) => parsed,
        Err(response) => return response,
    };
    if commands.updates.iter().all(|u| u.old == u.new) {
        return no_op_push(site, repo, &commands).await;
    }
    // Decided before the pack is read, so a refused push is answered at once; decided again
    // under the lock if the refs moved while the pack arrived.
    let before = match site.git.inspect(repo, &[]).await {
        Ok(inspection) => inspection.refs,
        Err(e) => return git_failure("reading the repository's refs failed", e),
    };
    if graspd_core::push::already_applied(&before, &commands.updates) {
        return already_applied(repo, &commands);
    }
    let verdicts = decide(site, repo, &before, &commands).await;
    if verdicts.iter().any(Result::is_err) {
        return refused(repo, &commands, verdicts);
    }
    // The pack goes to disk with no lock held: a client that stalls holds no repository.
    let runtime = site.git.runtime();
    let spooled = match spool::spool(runtime, site.git.incoming_path("push"), head, body).await {
        Ok(spooled) => spooled,
        Err(SpoolError::Body(e)) => return body_error(site, repo, &e),
        Err(SpoolError::Io(e)) => return git_failure("receiving the push failed", e),
    };
    let guard = match site.git.lock(repo).await {
        Ok(guard) => guard,
        Err(busy) => return status(StatusCode::SERVICE_UNAVAILABLE, &format!("{busy}\n")),
    };
    let current = match site.git.inspect(repo, &[]).await {
        Ok(inspection) => inspection.refs,
        Err(e) => return git_failure("reading the repository's refs failed", e),
    };
    if current != before {
        if graspd_core::push::already_applied(&current, &commands.updates) {
            return already_applied(repo, &commands);
        }
        let verdicts = decide(site, repo, &current, &commands).await;
        if verdicts.iter().any(Result::is_err) {
            return refused(repo, &commands, verdicts);
        }
    }
    // Only a `/prs/` repository can be missing here: it exists from its first accepted push.
    if !site.git.exists(repo) {
        if let Err(e) = site.git.create_for_push(repo, &guard).await {
            return git_failure("creating the repository failed", e);
        }
    }
    let path = site.git.repo_path(repo);
    let input = match spooled.reader(runtime) {
        Ok(input) => input,
        Err(e) => return git_failure("reading the received push failed", e),
    };
    let timeout = site.git.limits().process_timeout;
    let deadline = runtime.now() + timeout;
    let out =
        match git_smart::receive_pack(&**runtime, &path, protocol, input, spooled.len(), deadline)
            .await
        {
            Ok(out) => out,
            Err(e) => return git_failure("running git receive-pack failed", e),
        };
    if out.timed_out() {
        drop(guard);
        site.git.refuse(
            Limit::GitProcessTimeout,
            &format_args!(
                "git receive-pack for {repo} ran past its limit of {} s; killed",
                timeout.as_secs()
            ),
        );
        let reason = format!(
            "this server's git ran past its limit of {} s; nothing was changed",
            timeout.as_secs()
        );
        let verdicts = vec![Err(reason); commands.updates.len()];
        return refused(repo, &commands, verdicts);
    }
    if let Some(e) = &out.input_error {
        return git_failure("reading the received push failed", e);
    }
    if !out.success() {
        tracing::warn!(%repo, stderr = %out.stderr_tail(), "git receive-pack failed");
    }
    let landed = landed_updates(site, repo, &commands).await;
    drop(guard);
    if !landed.is_empty() {
        site.handlers.push.on_pushed(repo, &landed).await;
    }
    Response::new(full(out.stdout))
}

/// A push whose every command leaves its ref as it is changes nothing, so whatever pack it
/// carries is never read (it would only store objects nothing refers to): each ref is
/// reported as git would, `ok` where the ref is at the old value and refused otherwise.
async fn no_op_push(
    site: &Site,
    repo: &RepoKey,
    commands: &PushCommands,
) -> Response<ResponseBody> {
    let current = match site.git.inspect(repo, &[]).await {
        Ok(inspection) => inspection.refs,
        Err(e) => return git_failure("reading the repository's refs failed", e),
    };
    site.git.refuse(
        Limit::GitNoOpPack,
        &format_args!("a push to {repo} changes no ref; its pack is discarded unread"),
    );
    let outcomes: Vec<(&str, Result<(), String>)> = commands
        .updates
        .iter()
        .map(|u| {
            let here = current.get(&u.name).copied();
            let outcome = if here == (!u.old.is_zero()).then_some(u.old) {
                Ok(())
            } else {
                Err(format!("fetch first: {} changed here", u.name))
            };
            (u.name.as_str(), outcome)
        })
        .collect();
    Response::new(full(receive::report_status(
        commands.capabilities,
        &outcomes,
    )))
}

/// git's report for a push whose refs are already where it wants them (it raced a fetch
/// from another server, or an identical push): every ref `ok`, its pack unread.
fn already_applied(repo: &RepoKey, commands: &PushCommands) -> Response<ResponseBody> {
    tracing::info!(%repo, refs = commands.updates.len(), "push already applied here; answered ok");
    let outcomes: Vec<(&str, Result<(), String>)> = commands
        .updates
        .iter()
        .map(|u| (u.name.as_str(), Ok(())))
        .collect();
    Response::new(full(receive::report_status(
        commands.capabilities,
        &outcomes,
    )))
}

/// git's report for a push refused without running it: each ref shows its reason, or that
/// another ref was refused.
fn refused(
    repo: &RepoKey,
    commands: &PushCommands,
    verdicts: Vec<Result<(), String>>,
) -> Response<ResponseBody> {
    let outcomes: Vec<(&str, Result<(), String>)> = commands
        .updates
        .iter()
        .zip(verdicts)
        .map(|(update, verdict)| {
            (
                update.name.as_str(),
                verdict.and(Err(OTHER_REF_REJECTED.to_owned())),
            )
        })
        .collect();
    for (name, outcome) in &outcomes {
        tracing::info!(%repo, %name, reason = ?outcome.as_ref().err(), "push refused");
    }
    Response::new(full(receive::report_status(
        commands.capabilities,
        &outcomes,
    )))
}

/// The push handler's verdicts, one per update (a short answer counts as refusals).
async fn decide(
    site: &Site,
    repo: &RepoKey,
    current: &BTreeMap<String, graspd_core::Oid>,
    commands: &PushCommands,
) -> Vec<Result<(), String>> {
    let mut verdicts = site
        .handlers
        .push
        .decide_push(repo, current, &commands.updates)
        .await;
    verdicts.resize(
        commands.updates.len(),
        Err("internal error: no decision for this ref".to_owned()),
    );
    verdicts
}

/// The updates that are now true in the repo (receive-pack may refuse some by itself).
async fn landed_updates(
    site: &Site,
    repo: &RepoKey,
    commands: &PushCommands,
) -> Vec<crate::git::RefUpdate> {
    let refs = match site.git.inspect(repo, &[]).await {
        Ok(inspection) => inspection.refs,
        Err(e) => {
            tracing::warn!(%repo, error = %e, "cannot read refs after a push");
            return Vec::new();
        }
    };
    commands
        .updates
        .iter()
        .filter(|u| match refs.get(&u.name) {
            Some(now) => *now == u.new,
            None => u.new.is_zero(),
        })
        .cloned()
        .collect()
}
