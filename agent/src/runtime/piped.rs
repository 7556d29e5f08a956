//! A command's standard output taken out of a member's container through a FIFO in a
//! directory mounted into it, read by the agent itself: not copied through the container
//! engine (decision 171).
//!
//! `exec_stream` hands every byte of a backup to `dockerd` (or containerd's shim), which copies
//! it to the agent; on a replica's host that copy took more CPU than mariadb-backup itself
//! (1.18 s of 3 s on the replica's core, docs/benchmarks.md, session 25), in the run queue
//! ahead of the replica's I/O thread, which acknowledges the primary's commits. Here the
//! command runs as `sh -c 'exec "$@" > FIFO'`: the engine carries only its standard error
//! and exit code, and the bytes go from the command's process to the agent through one pipe.
//!
//! The FIFO is made in the member's configuration directory (mounted read-only at
//! `/etc/mofang`: the container can write into a FIFO there but cannot replace it), owned by
//! the directory's owner (the member's uid), mode 0600, one per command, removed when the
//! command's output has ended. The agent opens its read end before the command starts, and
//! holds a write end of its own until the first byte has come or the command has ended, so a
//! command that never opens the FIFO (it failed to start) ends the stream instead of hanging it.

use super::{ContainerRuntime, Error, ExecOutput, ExecStream, Result};
use futures::StreamExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe;

/// The pipe's buffer: the most an unprivileged process may ask (`/proc/sys/fs/pipe-max-size`
/// is 1 MiB by default); a bigger buffer, fewer wake-ups of both ends.
const PIPE_BYTES: usize = 1 << 20;
/// The most read at once.
const CHUNK: usize = 1 << 20;

/// A directory of this host mounted into a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PipeDir {
    /// The directory on this host.
    pub host: PathBuf,
    /// Where the container sees it.
    pub inside: String,
}

impl PipeDir {
    /// A member's configuration directory, at `/etc/mofang` in its container.
    pub fn config(host: PathBuf) -> Self {
        PipeDir {
            host,
            inside: "/etc/mofang".into(),
        }
    }
}

/// The command line that runs `cmd` with its standard output sent to `fifo` (a path in the
/// container): `sh -c 'exec "$@" > FIFO' sh CMD...` (the arguments are never parsed by the
/// shell; the FIFO's name is ours: letters, digits, `.`, `-`, `/`).
pub fn command_line(fifo: &str, cmd: &[&str]) -> Vec<String> {
    let mut v = vec![
        "sh".to_owned(),
        "-c".to_owned(),
        format!("exec \"$@\" > {fifo}"),
        "sh".to_owned(),
    ];
    v.extend(cmd.iter().map(|a| (*a).to_owned()));
    v
}

/// Runs `cmd` in `container` with its standard output read through a FIFO in `dir`; the
/// answer is shaped as [`ContainerRuntime::exec_stream`]'s (the output, then the exit code and
/// standard error). Dropping the output closes the FIFO: the command gets `EPIPE` and ends.
pub async fn exec_piped(
    runtime: &dyn ContainerRuntime,
    container: &str,
    dir: &PipeDir,
    cmd: &[&str],
) -> Result<ExecStream> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let name = format!(
        ".stream-{}-{}.fifo",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    let fifo = Fifo::make(&dir.host, &name)?;
    let reader = pipe::OpenOptions::new()
        .open_receiver(&fifo.0)
        .map_err(|e| io_err(&fifo.0, e))?;
    // A failure only leaves the default size.
    let _ = rustix::pipe::fcntl_setpipe_size(&reader, PIPE_BYTES);
    // Ours: reads wait (not end) until the command's shell has opened its end.
    let held = pipe::OpenOptions::new()
        .open_sender(&fifo.0)
        .map_err(|e| io_err(&fifo.0, e))?;
    let argv = command_line(&format!("{}/{name}", dir.inside), cmd);
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let exec = runtime.exec_stream(container, &argv, None).await?;

    // A small bounded channel, as the engines' own: the command writes no faster than the
    // reader takes.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<bytes::Bytes>>(4);
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let _fifo = fifo; // removed when the output has ended
        let mut reader = reader;
        let mut held = Some(held);
        let mut engine_out = Some(exec.stdout);
        let mut done = exec.done;
        let mut outcome: Option<Result<ExecOutput>> = None;
        let mut buf = bytes::BytesMut::with_capacity(CHUNK);
        loop {
            tokio::select! {
                r = reader.read_buf(&mut buf) => match r {
                    Ok(0) => break,
                    Ok(_) => {
                        held = None;
                        let chunk = buf.split().freeze();
                        buf.reserve(CHUNK);
                        if tx.send(Ok(chunk)).await.is_err() {
                            // The reader is gone: the FIFO closes, the command ends on EPIPE.
                            break;
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(Error::Api(format!("reading the command's output: {e}")))).await;
                        break;
                    }
                },
                // The engine's own stdout stays empty; it is drained so the engine goes on to
                // the standard error and the exit code.
                item = next_of(&mut engine_out) => if item.is_none() { engine_out = None },
                d = &mut done, if outcome.is_none() => {
                    // The command ended: its end of the FIFO is closed, so is ours now; what
                    // it wrote is read to the end, then the stream ends.
                    outcome = Some(d.unwrap_or_else(|_| Err(Error::Api("the runtime dropped the command".into()))));
                    held = None;
                }
            }
        }
        drop((reader, held, tx));
        let outcome = match outcome {
            Some(o) => o,
            None => {
                // Drain the engine's stdout so it reports the outcome.
                if let Some(mut s) = engine_out {
                    while s.next().await.is_some() {}
                }
                done.await
                    .unwrap_or_else(|_| Err(Error::Api("the runtime dropped the command".into())))
            }
        };
        let _ = done_tx.send(outcome);
    });
    Ok(ExecStream {
        stdout: tokio_stream::wrappers::ReceiverStream::new(rx).boxed(),
        done: done_rx,
    })
}

/// The next item of a stream that may be gone (then never ready).
async fn next_of(
    s: &mut Option<futures::stream::BoxStream<'static, Result<bytes::Bytes>>>,
) -> Option<Result<bytes::Bytes>> {
    match s {
        Some(s) => s.next().await,
        None => std::future::pending().await,
    }
}

/// A FIFO, removed on drop.
struct Fifo(PathBuf);

impl Fifo {
    /// Makes `dir/name`, mode 0600, owned by `dir`'s owner (the member's uid); FIFOs left in
    /// `dir` by an earlier agent process (killed mid-stream) are removed first.
    fn make(dir: &Path, name: &str) -> Result<Fifo> {
        let path = dir.join(name);
        let _ = std::fs::remove_file(&path);
        let ours = format!(".stream-{}-", std::process::id());
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if n.starts_with(".stream-") && n.ends_with(".fifo") && !n.starts_with(&ours) {
                let _ = std::fs::remove_file(e.path());
            }
        }
        {
            use rustix::fs::{FileType, Mode, CWD};
            rustix::fs::mknodat(CWD, &path, FileType::Fifo, Mode::from_raw_mode(0o600), 0)
                .map_err(|e| io_err(&path, e.into()))?;
        }
        let fifo = Fifo(path);
        let owner = std::fs::metadata(dir).map_err(|e| io_err(dir, e))?;
        std::os::unix::fs::chown(&fifo.0, Some(owner.uid()), Some(owner.gid()))
            .map_err(|e| io_err(&fifo.0, e))?;
        Ok(fifo)
    }
}

impl Drop for Fifo {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn io_err(path: &Path, e: std::io::Error) -> Error {
    Error::Api(format!("stream pipe {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    //! On a runtime whose "container" is this host: its commands run under `sh` here, with
    //! `/etc/mofang` read as the test's directory. Real FIFOs, real processes.

    use super::*;
    use async_trait::async_trait;

    struct Local {
        dir: PathBuf,
    }

    /// What the calls these tests never make answer.
    fn unused() -> Error {
        Error::Api("not part of this test runtime".into())
    }

    #[async_trait]
    impl ContainerRuntime for Local {
        async fn ping(&self) -> Result<()> {
            Ok(())
        }
        async fn image_exists(&self, _: &str) -> Result<bool> {
            Ok(true)
        }
        async fn create(&self, _: &super::super::ContainerSpec) -> Result<String> {
            Err(unused())
        }
        async fn start(&self, _: &str) -> Result<()> {
            Err(unused())
        }
        async fn stop(&self, _: &str, _: std::time::Duration) -> Result<()> {
            Err(unused())
        }
        async fn kill(&self, _: &str, _: &str) -> Result<()> {
            Err(unused())
        }
        async fn remove(&self, _: &str, _: bool) -> Result<()> {
            Err(unused())
        }
        async fn inspect(&self, _: &str) -> Result<super::super::ContainerInfo> {
            Err(unused())
        }
        async fn update_limits(&self, _: &str, _: f64, _: i64) -> Result<()> {
            Err(unused())
        }
        async fn list(&self, _: &[(&str, &str)]) -> Result<Vec<super::super::ContainerInfo>> {
            Err(unused())
        }
        async fn exec(&self, _: &str, _: &[&str], _: Option<&str>) -> Result<ExecOutput> {
            Err(unused())
        }
        async fn exec_stream(&self, id: &str, cmd: &[&str], _: Option<&str>) -> Result<ExecStream> {
            if id != "running" {
                return Err(Error::Api(format!("{id}: container is not running")));
            }
            let dir = self.dir.to_string_lossy().into_owned();
            let cmd: Vec<String> = cmd.iter().map(|a| a.replace("/etc/mofang", &dir)).collect();
            let child = tokio::process::Command::new(&cmd[0])
                .args(&cmd[1..])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .map_err(|e| Error::Api(e.to_string()))?;
            let (tx, rx) = tokio::sync::oneshot::channel();
            tokio::spawn(async move {
                let out = child.wait_with_output().await;
                let _ = tx.send(
                    out.map(|o| ExecOutput {
                        exit_code: i64::from(o.status.code().unwrap_or(-1)),
                        stdout: String::new(),
                        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
                    })
                    .map_err(|e| Error::Api(e.to_string())),
                );
            });
            Ok(ExecStream {
                stdout: futures::stream::empty().boxed(),
                done: rx,
            })
        }
        fn events(
            &self,
            _: (&str, &str),
        ) -> futures::stream::BoxStream<'static, Result<super::super::RuntimeEvent>> {
            futures::stream::empty().boxed()
        }
    }

    fn rig() -> (tempfile::TempDir, Local, PipeDir) {
        let dir = tempfile::tempdir().expect("tempdir");
        let local = Local {
            dir: dir.path().to_owned(),
        };
        let pd = PipeDir::config(dir.path().to_owned());
        (dir, local, pd)
    }

    async fn collect(s: ExecStream) -> (Vec<u8>, Result<ExecOutput>) {
        let mut out = Vec::new();
        let mut stdout = s.stdout;
        while let Some(c) = stdout.next().await {
            out.extend_from_slice(&c.expect("chunk"));
        }
        (out, s.done.await.expect("outcome"))
    }

    fn left(dir: &Path) -> Vec<String> {
        std::fs::read_dir(dir)
            .expect("dir")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect()
    }

    /// Eight MiB come through whole and in order, the standard error and exit code after
    /// them, and the FIFO is gone.
    #[tokio::test]
    async fn a_commands_output_comes_through_the_fifo_whole() {
        let (dir, rt, pd) = rig();
        let s = exec_piped(
            &rt,
            "running",
            &pd,
            &[
                "sh",
                "-c",
                "head -c 8388608 /dev/zero | tr '\\0' 'x'; echo done >&2",
            ],
        )
        .await
        .expect("started");
        let (out, outcome) = collect(s).await;
        assert_eq!(out.len(), 8 << 20);
        assert!(out.iter().all(|b| *b == b'x'));
        let o = outcome.expect("ran");
        assert_eq!((o.exit_code, o.stderr.trim()), (0, "done"));
        assert!(left(dir.path()).is_empty(), "{:?}", left(dir.path()));
    }

    /// A command that fails before it opens the FIFO (here: its program is missing) ends the
    /// stream with its exit code; nothing hangs.
    #[tokio::test]
    async fn a_command_that_never_writes_ends_the_stream() {
        let (dir, rt, pd) = rig();
        let s = exec_piped(&rt, "running", &pd, &["/no/such/program"])
            .await
            .expect("started");
        let (out, outcome) = tokio::time::timeout(std::time::Duration::from_secs(10), collect(s))
            .await
            .expect("the stream ends");
        assert!(out.is_empty());
        assert_eq!(outcome.expect("ran").exit_code, 127);
        // An empty output that succeeds ends too.
        let s = exec_piped(&rt, "running", &pd, &["true"])
            .await
            .expect("started");
        let (out, outcome) = collect(s).await;
        assert!(out.is_empty());
        assert_eq!(outcome.expect("ran").exit_code, 0);
        assert!(left(dir.path()).is_empty());
    }

    /// The engine refuses the command: an error at once, and no FIFO left behind (nor one an
    /// earlier agent process left).
    #[tokio::test]
    async fn a_refused_command_leaves_no_fifo() {
        let (dir, rt, pd) = rig();
        std::fs::write(dir.path().join(".stream-1-7.fifo"), b"").expect("a stale one");
        std::fs::write(dir.path().join("my.cnf"), b"").expect("a config file");
        let e = exec_piped(&rt, "stopped", &pd, &["true"])
            .await
            .unwrap_err();
        assert!(e.to_string().contains("not running"), "{e}");
        assert_eq!(left(dir.path()), ["my.cnf"]);
    }

    /// Dropping the output stops the command (it gets EPIPE) instead of leaving it blocked on
    /// a pipe nobody reads.
    #[tokio::test]
    async fn dropping_the_output_ends_the_command() {
        let (_dir, rt, pd) = rig();
        let mut s = exec_piped(&rt, "running", &pd, &["sh", "-c", "exec yes"])
            .await
            .expect("started");
        let first = s.stdout.next().await.expect("output").expect("chunk");
        assert!(first.starts_with(b"y\n"));
        drop(s.stdout);
        let outcome = tokio::time::timeout(std::time::Duration::from_secs(10), s.done)
            .await
            .expect("the command ended")
            .expect("outcome")
            .expect("ran");
        assert_ne!(outcome.exit_code, 0, "killed by SIGPIPE");
    }

    /// The arguments reach the program as they are: no shell parsing of them.
    #[test]
    fn arguments_are_passed_not_parsed() {
        assert_eq!(
            command_line("/etc/mofang/.s.fifo", &["printf", "%s", "a b; rm -rf /"]),
            [
                "sh",
                "-c",
                "exec \"$@\" > /etc/mofang/.s.fifo",
                "sh",
                "printf",
                "%s",
                "a b; rm -rf /"
            ]
        );
    }
}
