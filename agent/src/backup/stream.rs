//! Moving a backup's bytes: a stream (a command's standard output in a member's container)
//! compressed with multi-threaded zstd and uploaded as one object in parts, its size and
//! sha256 computed on the way. Nothing is written to local disk; memory holds at most a few
//! parts (`PART` each).

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt;
use mofang_common::repo::Repo;
use object_store::WriteMultipart;
use sha2::{Digest, Sha256};
use std::io::Write;

/// Size of one uploaded part (S3 wants at least 5 MiB but for the last).
const PART: usize = 8 << 20;
/// Parts in flight at once.
const PARTS_IN_FLIGHT: usize = 4;

/// Why a stream could not be stored.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading the source failed (the container died, the runtime failed).
    #[error("reading the backup stream: {0}")]
    Source(String),
    /// The repository refused or failed a write.
    #[error("writing {object} to the repository: {source}")]
    Store {
        /// The object's path.
        object: String,
        /// What the store said.
        #[source]
        source: object_store::Error,
    },
    /// The compressor failed.
    #[error("zstd: {0}")]
    Compress(#[source] std::io::Error),
    /// The encryption failed.
    #[error("encrypting: {0}")]
    Encrypt(#[from] mofang_common::backup_crypt::Error),
}

/// Result of streaming.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How to compress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Zstd {
    /// zstd level (3 is zstd's default).
    pub level: i32,
    /// Worker threads (0: single-threaded).
    pub threads: u32,
    /// Nice value (0 ..= 19) of the compressing thread and of zstd's workers, which inherit
    /// it: 19 lets every other process of the host (the members' databases above all) run
    /// first, the backup taking what CPU is left (decision 116); 0 competes as equals.
    pub nice: i32,
}

/// Client-side encryption of an object (`mofang_common::backup_crypt`): its key and what it
/// is bound to (its path). [`store`] makes it from the repository's key (decision 119).
pub struct Encrypt {
    /// The object's 256-bit key.
    pub key: zeroize::Zeroizing<[u8; 32]>,
    /// Associated data: the object's path in the repository.
    pub aad: Vec<u8>,
}

impl std::fmt::Debug for Encrypt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Encrypt").finish_non_exhaustive()
    }
}

/// What was stored.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Stored {
    /// Path of the object in the repository.
    pub path: String,
    /// Bytes stored (compressed).
    pub size: u64,
    /// sha256 of the stored bytes, hex.
    pub sha256: String,
    /// Bytes read from the source (before compression).
    pub source_bytes: u64,
    /// How it was encrypted (the repository's key id); `None`: stored in clear.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<mofang_common::backup::ObjectEncryption>,
}

/// An upload that is aborted if it is dropped unfinished: a backup job cancelled mid-way (it
/// left the desired state) drops its future, and the store must not keep its parts.
struct AbortOnDrop(Option<WriteMultipart>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let (Some(w), Ok(rt)) = (self.0.take(), tokio::runtime::Handle::try_current()) {
            rt.spawn(async move {
                let _ = w.abort().await;
            });
        }
    }
}

/// Chunks waiting on each side of the compressing thread: with `PART`-sized outputs at
/// most, memory stays bounded (a few parts) however large the stream.
const CHANNEL: usize = 4;

/// What the compressing thread computed.
struct Sealed {
    size: u64,
    sha256: String,
}

/// The CPU work of a stream, on a thread of its own, never on the async
/// runtime's workers: compresses each chunk received (zstd's own worker threads do the
/// compressing when `threads > 0`), hashes what will be stored, and hands it on. On a small
/// host this work would otherwise hold a runtime worker for seconds at a time and delay the
/// agent's heartbeats past its lease (issue 16, decision 115). Ends when `input` closes (the
/// compressor is finished and its tail sent) or when `output` is gone (the upload failed).
///
/// `failed` is set by the feeder before it closes `input` after a source error: the stream is
/// then left unfinished (no compressor tail, no last encrypted chunk), so that a reader of an
/// encrypted stream sees it cut short rather than complete.
fn seal(
    mut input: tokio::sync::mpsc::Receiver<Bytes>,
    output: tokio::sync::mpsc::Sender<Vec<u8>>,
    zstd: Option<Zstd>,
    encrypt: Option<Encrypt>,
    failed: &std::sync::atomic::AtomicBool,
) -> Result<Option<Sealed>> {
    let mut encryptor = encrypt
        .as_ref()
        .map(|e| mofang_common::backup_crypt::Encryptor::new(&e.key, &e.aad));
    let mut encoder = match zstd {
        Some(z) => {
            let mut e =
                zstd::stream::write::Encoder::new(Vec::new(), z.level).map_err(Error::Compress)?;
            if z.threads > 0 {
                e.multithread(z.threads).map_err(Error::Compress)?;
            }
            Some(e)
        }
        None => None,
    };
    let mut hash = Sha256::new();
    let mut size = 0u64;
    let mut emit = |out: Vec<u8>| -> bool {
        if out.is_empty() {
            return true;
        }
        hash.update(&out);
        size += out.len() as u64;
        output.blocking_send(out).is_ok()
    };
    while let Some(chunk) = input.blocking_recv() {
        let mut out = match encoder.as_mut() {
            Some(e) => {
                e.write_all(&chunk).map_err(Error::Compress)?;
                std::mem::take(e.get_mut())
            }
            None => chunk.to_vec(),
        };
        if let Some(enc) = encryptor.as_mut() {
            let mut sealed = Vec::with_capacity(out.len() + 64);
            enc.update(&out, &mut sealed)?;
            out = sealed;
        }
        if !emit(out) {
            return Ok(None);
        }
    }
    if failed.load(std::sync::atomic::Ordering::SeqCst) {
        return Ok(None);
    }
    let mut tail = match encoder.take() {
        Some(e) => e.finish().map_err(Error::Compress)?,
        None => Vec::new(),
    };
    if let Some(mut enc) = encryptor.take() {
        let mut sealed = Vec::with_capacity(tail.len() + 64);
        enc.update(&tail, &mut sealed)?;
        enc.finish(&mut sealed)?;
        tail = sealed;
    }
    if !emit(tail) {
        return Ok(None);
    }
    Ok(Some(Sealed {
        size,
        sha256: hex::encode(hash.finalize()),
    }))
}

/// Lowers the calling thread's CPU priority to `nice` (Linux keeps a nice value per thread,
/// and threads it creates inherit it). Raising it back would need privileges, which is why
/// the thread is not a pooled one. A failure only leaves the priority as it was.
fn lower_priority(nice: i32) {
    let tid = rustix::thread::gettid();
    if let Err(e) = rustix::process::setpriority_process(Some(tid), nice) {
        tracing::warn!(nice, error = %e, "could not lower the backup's CPU priority");
    }
}

/// Stores `input` as `rel` in `repo`, compressed with `zstd` if given, then encrypted if the
/// repository has a key (with the key derived for `rel`, bound to `rel`). On any failure, and
/// when the future is dropped unfinished, the multipart upload is aborted: no partial object
/// is left. `progress` is told the source bytes read so far.
///
/// Three stages run at once, joined by bounded channels: reading `input` (this task), the
/// compression and hashing ([`seal`], a thread of its own), and the upload (this task, parts
/// in flight on the runtime). The async side only moves buffers.
pub async fn store<E: std::fmt::Display>(
    repo: &Repo,
    rel: &str,
    input: BoxStream<'_, Result<Bytes, E>>,
    zstd: Option<Zstd>,
    progress: &(dyn Fn(u64) + Send + Sync),
) -> Result<Stored> {
    let encrypt = repo.key.as_ref().map(|k| Encrypt {
        key: k.object_key(rel),
        aad: rel.as_bytes().to_vec(),
    });
    let mut stored = store_encrypted(repo, rel, input, zstd, encrypt, progress).await?;
    stored.encryption = repo
        .key
        .as_ref()
        .map(mofang_common::backup::ObjectEncryption::with);
    Ok(stored)
}

/// [`store`], the compressed stream also encrypted with `encrypt` if given (size and sha256
/// are then those of the encrypted bytes, as stored).
pub async fn store_encrypted<E: std::fmt::Display>(
    repo: &Repo,
    rel: &str,
    input: BoxStream<'_, Result<Bytes, E>>,
    zstd: Option<Zstd>,
    encrypt: Option<Encrypt>,
    progress: &(dyn Fn(u64) + Send + Sync),
) -> Result<Stored> {
    let path = repo.path(rel);
    let object = path.to_string();
    let store_err = |source| Error::Store {
        object: object.clone(),
        source,
    };
    // The upload is created once the source has produced its first bytes: a command that
    // fails at once leaves nothing in the store, not even an upload to abort.
    let mut input = input.peekable();
    match std::pin::Pin::new(&mut input).peek().await {
        Some(Ok(first)) => progress(first.len() as u64),
        Some(Err(e)) => return Err(Error::Source(e.to_string())),
        None => {}
    }
    let upload = repo.store.put_multipart(&path).await.map_err(store_err)?;
    let mut guard = AbortOnDrop(Some(WriteMultipart::new_with_chunk_size(upload, PART)));
    let Some(w) = guard.0.as_mut() else {
        return Err(Error::Source("the upload vanished".into()));
    };
    let (raw_tx, raw_rx) = tokio::sync::mpsc::channel::<Bytes>(CHANNEL);
    let (out_tx, mut out_rx) = tokio::sync::mpsc::channel::<Vec<u8>>(CHANNEL);
    // A thread of its own rather than one of the runtime's blocking pool: its nice value is
    // lowered for the backup and must not stay on a pooled thread afterwards.
    let (done_tx, sealing) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("backup-zstd".into())
        .spawn(move || {
            if let Some(z) = zstd.filter(|z| z.nice > 0) {
                lower_priority(z.nice);
            }
            let _ = done_tx.send(seal(raw_rx, out_tx, zstd, encrypt, &Default::default()));
        })
        .map_err(Error::Compress)?;
    let mut source_bytes = 0u64;
    // Reads the source into the compressing thread. A closed channel means that thread
    // ended early: its own result says why.
    let feed = async {
        while let Some(chunk) = input.next().await {
            let chunk = chunk.map_err(|e| Error::Source(e.to_string()))?;
            source_bytes += chunk.len() as u64;
            progress(source_bytes);
            if raw_tx.send(chunk).await.is_err() {
                break;
            }
        }
        drop(raw_tx);
        Ok::<(), Error>(())
    };
    let upload = async {
        while let Some(out) = out_rx.recv().await {
            w.wait_for_capacity(PARTS_IN_FLIGHT)
                .await
                .map_err(store_err)?;
            w.write(&out);
        }
        Ok::<(), Error>(())
    };
    // The first failure of either stops both (and so the compressing thread, whose
    // channels close).
    let result = futures::future::try_join(feed, upload).await.map(|_| ());
    let sealed = match result {
        Ok(()) => match sealing.await {
            Ok(Ok(Some(sealed))) => Ok(sealed),
            Ok(Ok(None)) => Err(Error::Source("the upload stopped taking data".into())),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(Error::Compress(std::io::Error::other(
                "the compressing thread ended without a result",
            ))),
        },
        Err(e) => Err(e),
    };
    let Some(w) = guard.0.take() else {
        return Err(Error::Source("the upload vanished".into()));
    };
    let sealed = match sealed {
        Ok(s) => s,
        Err(e) => {
            let _ = w.abort().await;
            return Err(e);
        }
    };
    w.finish().await.map_err(store_err)?;
    Ok(Stored {
        path: object,
        size: sealed.size,
        sha256: sealed.sha256,
        source_bytes,
        encryption: None,
    })
}

/// `input` compressed with `zstd` and sealed with `encrypt`, as a stream of its own (a
/// physical seed's copy, served to another agent; decision 167). The compressing thread is
/// [`seal`]'s; memory stays bounded by its channels, and a slow reader slows `input` down.
/// When `input` fails, the stream ends with that error and without its last sealed chunk, so
/// that the reader finds it cut short; when the reader goes away, `input` is dropped.
pub fn sealed_stream(
    mut input: BoxStream<'static, Result<Bytes, String>>,
    zstd: Zstd,
    encrypt: Encrypt,
) -> Result<BoxStream<'static, Result<Bytes, String>>> {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let (raw_tx, raw_rx) = tokio::sync::mpsc::channel::<Bytes>(CHANNEL);
    let (out_tx, out_rx) = tokio::sync::mpsc::channel::<Vec<u8>>(CHANNEL);
    let failed = Arc::new(AtomicBool::new(false));
    let (error_tx, error_rx) = tokio::sync::oneshot::channel::<String>();
    let seen = failed.clone();
    std::thread::Builder::new()
        .name("seed-zstd".into())
        .spawn(move || {
            if zstd.nice > 0 {
                lower_priority(zstd.nice);
            }
            if let Err(e) = seal(raw_rx, out_tx, Some(zstd), Some(encrypt), &seen) {
                tracing::warn!(error = %e, "sealing a seed copy failed");
            }
        })
        .map_err(Error::Compress)?;
    tokio::spawn(async move {
        while let Some(chunk) = input.next().await {
            match chunk {
                Ok(c) => {
                    if raw_tx.send(c).await.is_err() {
                        // The reader or the sealing thread is gone: `input` is dropped.
                        return;
                    }
                }
                Err(e) => {
                    // Flagged before the channel closes: the sealing thread then leaves
                    // the stream unfinished.
                    failed.store(true, Ordering::SeqCst);
                    drop(raw_tx);
                    let _ = error_tx.send(e);
                    return;
                }
            }
        }
    });
    let body = tokio_stream::wrappers::ReceiverStream::new(out_rx).map(|v| Ok(Bytes::from(v)));
    // After the last sealed bytes: the source's error, if it failed.
    let tail = futures::stream::once(async move { error_rx.await.ok().map(Err) })
        .filter_map(futures::future::ready);
    Ok(body.chain(tail).boxed())
}

#[cfg(test)]
mod tests {
    use super::*;
    use mofang_common::repo::RepoSpec;

    fn repo(dir: &std::path::Path) -> Repo {
        RepoSpec::Fs {
            path: dir.to_string_lossy().into_owned(),
            encryption_key: None,
            retired_keys: Vec::new(),
        }
        .open()
        .unwrap()
    }

    /// A physical seed's copy (decision 167): sealed by the donor, it opens to the input on
    /// the other side; a source that fails ends the stream unsealed, so a reader that never
    /// sees the error item (the connection simply closed) still finds the copy cut short.
    #[tokio::test]
    async fn a_seed_copy_opens_whole_and_a_failed_source_is_found_cut_short() {
        use mofang_common::seed::SeedKeys;
        let keys = SeedKeys::derive(
            "adminPasswordOfTheInstance0123",
            "orders",
            "orders-1",
            "orders-3",
        );
        let data: Vec<u8> = (0..3u32 << 20)
            .map(|i| (i % 251) as u8 ^ (i >> 13) as u8)
            .collect();
        let source = |fail: bool| {
            let mut items: Vec<Result<Bytes, String>> = data
                .chunks(100_003)
                .map(|c| Ok(Bytes::copy_from_slice(c)))
                .collect();
            if fail {
                items.push(Err("mariadb-backup exited with code 1".into()));
            }
            futures::stream::iter(items).boxed()
        };
        let seal = |fail: bool| {
            let encrypt = Encrypt {
                key: zeroize::Zeroizing::new(*keys.stream_key()),
                aad: keys.aad().as_bytes().to_vec(),
            };
            let zstd = Zstd {
                level: 3,
                threads: 2,
                nice: 0,
            };
            sealed_stream(source(fail), zstd, encrypt).unwrap()
        };
        let open = |sealed: BoxStream<'static, Result<Bytes, String>>| {
            crate::backup::restore::opened_seed(
                "the copy",
                zeroize::Zeroizing::new(*keys.stream_key()),
                keys.aad().as_bytes(),
                sealed,
                std::sync::Arc::new(|_, _| {}),
            )
            .unwrap()
        };
        let mut got = Vec::new();
        let mut opened = open(seal(false));
        while let Some(item) = opened.next().await {
            got.extend_from_slice(&item.unwrap());
        }
        assert!(got == data, "{} bytes opened of {}", got.len(), data.len());

        // The donor's source fails: the error item comes last, after bytes left unsealed.
        let items: Vec<_> = seal(true).collect().await;
        assert_eq!(
            items.last().and_then(|i| i.clone().err()).as_deref(),
            Some("mariadb-backup exited with code 1")
        );
        // Without the error item (the connection closed): the reader finds it cut short.
        let bytes_only = futures::stream::iter(items.into_iter().filter(Result::is_ok)).boxed();
        let outcome: Vec<_> = open(bytes_only).collect().await;
        let last = outcome.last().unwrap().clone().unwrap_err();
        assert!(last.contains("cut short"), "{last}");
    }

    /// 20 MiB in odd chunks, compressed on 2 threads: the object decompresses to the input,
    /// its size and sha256 are those of the stored bytes; a failing source leaves nothing.
    #[tokio::test]
    async fn compressed_object_round_trips_and_a_failed_source_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let repo = repo(dir.path());
        let data: Vec<u8> = (0..20u32 << 20)
            .map(|i| (i % 251) as u8 ^ (i >> 13) as u8)
            .collect();
        let chunks: Vec<Result<Bytes, String>> = data
            .chunks(1_000_003)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        let seen = std::sync::atomic::AtomicU64::new(0);
        let stored = store(
            &repo,
            "b1/data.zst",
            futures::stream::iter(chunks).boxed(),
            Some(Zstd {
                level: 3,
                threads: 2,
                nice: 0,
            }),
            &|n| seen.store(n, std::sync::atomic::Ordering::Relaxed),
        )
        .await
        .unwrap();
        assert_eq!(stored.source_bytes, data.len() as u64);
        assert_eq!(seen.into_inner(), data.len() as u64);
        let on_disk = std::fs::read(dir.path().join("b1/data.zst")).unwrap();
        assert_eq!(on_disk.len() as u64, stored.size);
        assert!(stored.size < stored.source_bytes / 2, "compressed");
        assert_eq!(hex::encode(Sha256::digest(&on_disk)), stored.sha256);
        assert_eq!(zstd::decode_all(&on_disk[..]).unwrap(), data);

        let failing: Vec<Result<Bytes, String>> = vec![
            Ok(Bytes::from(vec![1u8; 9 << 20])),
            Err("container died".into()),
        ];
        let e = store(
            &repo,
            "b2/data.zst",
            futures::stream::iter(failing).boxed(),
            None,
            &|_| {},
        )
        .await
        .unwrap_err();
        assert!(e.to_string().contains("container died"), "{e}");
        assert!(!dir.path().join("b2/data.zst").exists());
    }

    /// The compression and hashing run off the async runtime's threads: on a runtime with a
    /// single thread (as a busy 2-core host may leave the agent), a task ticking every 50 ms
    /// (as the heartbeat does, every second) misses few ticks while 96 MiB that zstd cannot
    /// shrink are compressed on 2 threads, hashed and stored. Inline, it missed nearly all
    /// (139 of 160 at 10 ms on an idle 2-core host); a tick is missed only when it comes a
    /// whole period late, which a loaded host's scheduling alone rarely makes it.
    #[test]
    fn storing_leaves_the_runtime_responsive() {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::Arc;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let repo = repo(dir.path());
            let mut x = 0x9E37_79B9_7F4A_7C15u64;
            let data: Vec<u8> = (0..(96usize << 20) / 8)
                .flat_map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x.to_le_bytes()
                })
                .collect();
            let chunks: Vec<Result<Bytes, String>> = data
                .chunks(1 << 20)
                .map(|c| Ok(Bytes::copy_from_slice(c)))
                .collect();
            const PERIOD_MS: u64 = 50;
            let done = Arc::new(AtomicBool::new(false));
            let stop = done.clone();
            let ticker = tokio::spawn(async move {
                let mut every = tokio::time::interval(std::time::Duration::from_millis(PERIOD_MS));
                every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
                let mut ticks = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    every.tick().await;
                    ticks += 1;
                }
                ticks
            });
            // The ticker's first tick is at once: let it start before the clock does.
            tokio::task::yield_now().await;
            let started = std::time::Instant::now();
            let stored = store(
                &repo,
                "b4/data.zst",
                futures::stream::iter(chunks).boxed(),
                Some(Zstd {
                    level: 3,
                    threads: 2,
                    nice: 0,
                }),
                &|_| {},
            )
            .await
            .unwrap();
            let elapsed = started.elapsed().as_millis() as u64;
            done.store(true, Ordering::SeqCst);
            let ticks = ticker.await.unwrap();
            assert_eq!(stored.source_bytes, data.len() as u64);
            let on_disk = std::fs::read(dir.path().join("b4/data.zst")).unwrap();
            assert_eq!(hex::encode(Sha256::digest(&on_disk)), stored.sha256);
            let expected = elapsed / PERIOD_MS;
            let missed = expected.saturating_sub(ticks);
            assert!(
                missed <= expected / 4,
                "{missed} of {expected} ticks missed ({ticks} ticked in {elapsed} ms)"
            );
        });
    }

    /// The compressing thread's nice value is lowered for itself only (zstd's workers, which
    /// it creates, inherit it); the thread that asked keeps its own.
    #[test]
    fn a_lowered_priority_is_the_threads_own() {
        let own = || rustix::process::getpriority_process(Some(rustix::thread::gettid())).unwrap();
        let before = own();
        let (lowered, inherited) = std::thread::spawn(move || {
            lower_priority(before.max(0) + 5);
            let child = std::thread::spawn(own).join().unwrap();
            (own(), child)
        })
        .join()
        .unwrap();
        assert_eq!((lowered, inherited), (before.max(0) + 5, before.max(0) + 5));
        assert_eq!(own(), before);
    }

    /// Through a repository with a key, an object holds none of its plaintext and starts
    /// with the encryption's header, not a zstd frame; with the key derived for its path it
    /// decrypts and decompresses to the input; its size and sha256 are those of the stored
    /// bytes, and it records the repository key's id.
    #[tokio::test]
    async fn an_encrypted_object_is_not_readable_without_its_key() {
        use mofang_common::backup_crypt::{Decryptor, RepoKey};
        let dir = tempfile::tempdir().unwrap();
        let mut repo = repo(dir.path());
        let key = RepoKey::generate();
        repo.key = Some(key.clone());
        let data: Vec<u8> = (0..3_000_000u32)
            .flat_map(|i| format!("row {i} secret value;").into_bytes())
            .take(5 << 20)
            .collect();
        let chunks: Vec<Result<Bytes, String>> = data
            .chunks(700_001)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        let stored = store(
            &repo,
            "b5/data.zst",
            futures::stream::iter(chunks).boxed(),
            Some(Zstd {
                level: 3,
                threads: 2,
                nice: 0,
            }),
            &|_| {},
        )
        .await
        .unwrap();
        let enc = stored.encryption.clone().expect("recorded as encrypted");
        assert_eq!(enc.algorithm, mofang_common::backup_crypt::ALGORITHM);
        assert_eq!(enc.key_id, key.id());
        let on_disk = std::fs::read(dir.path().join("b5/data.zst")).unwrap();
        assert_eq!(on_disk.len() as u64, stored.size);
        assert_eq!(hex::encode(Sha256::digest(&on_disk)), stored.sha256);
        assert!(!on_disk.windows(12).any(|w| w == b"secret value"));
        assert!(
            on_disk.starts_with(mofang_common::backup_crypt::MAGIC),
            "no zstd frame first"
        );
        let mut d = Decryptor::new(&key.object_key("b5/data.zst"), b"b5/data.zst");
        let mut plain = Vec::new();
        d.update(&on_disk, &mut plain).unwrap();
        d.finish(&mut plain).unwrap();
        assert_eq!(zstd::decode_all(&plain[..]).unwrap(), data);
    }

    /// A store whose uploads record whether they were aborted (S3 keeps the parts of an
    /// upload nobody aborts; the local store's uploads clean up after themselves, so they
    /// cannot show it).
    #[derive(Debug)]
    struct Recording {
        inner: object_store::memory::InMemory,
        aborted: std::sync::Arc<std::sync::atomic::AtomicBool>,
    }

    impl std::fmt::Display for Recording {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("Recording")
        }
    }

    #[derive(Debug)]
    struct RecordingUpload {
        inner: Box<dyn object_store::MultipartUpload>,
        aborted: std::sync::Arc<std::sync::atomic::AtomicBool>,
    }

    #[async_trait::async_trait]
    impl object_store::MultipartUpload for RecordingUpload {
        fn put_part(&mut self, data: object_store::PutPayload) -> object_store::UploadPart {
            self.inner.put_part(data)
        }
        async fn complete(&mut self) -> object_store::Result<object_store::PutResult> {
            self.inner.complete().await
        }
        async fn abort(&mut self) -> object_store::Result<()> {
            self.aborted
                .store(true, std::sync::atomic::Ordering::SeqCst);
            self.inner.abort().await
        }
    }

    #[async_trait::async_trait]
    impl object_store::ObjectStore for Recording {
        async fn put_opts(
            &self,
            location: &object_store::path::Path,
            payload: object_store::PutPayload,
            opts: object_store::PutOptions,
        ) -> object_store::Result<object_store::PutResult> {
            self.inner.put_opts(location, payload, opts).await
        }
        async fn put_multipart_opts(
            &self,
            location: &object_store::path::Path,
            opts: object_store::PutMultipartOptions,
        ) -> object_store::Result<Box<dyn object_store::MultipartUpload>> {
            Ok(Box::new(RecordingUpload {
                inner: self.inner.put_multipart_opts(location, opts).await?,
                aborted: self.aborted.clone(),
            }))
        }
        async fn get_opts(
            &self,
            location: &object_store::path::Path,
            options: object_store::GetOptions,
        ) -> object_store::Result<object_store::GetResult> {
            self.inner.get_opts(location, options).await
        }
        async fn delete(&self, location: &object_store::path::Path) -> object_store::Result<()> {
            self.inner.delete(location).await
        }
        fn list(
            &self,
            prefix: Option<&object_store::path::Path>,
        ) -> BoxStream<'static, object_store::Result<object_store::ObjectMeta>> {
            self.inner.list(prefix)
        }
        async fn list_with_delimiter(
            &self,
            prefix: Option<&object_store::path::Path>,
        ) -> object_store::Result<object_store::ListResult> {
            self.inner.list_with_delimiter(prefix).await
        }
        async fn copy(
            &self,
            from: &object_store::path::Path,
            to: &object_store::path::Path,
        ) -> object_store::Result<()> {
            self.inner.copy(from, to).await
        }
        async fn copy_if_not_exists(
            &self,
            from: &object_store::path::Path,
            to: &object_store::path::Path,
        ) -> object_store::Result<()> {
            self.inner.copy_if_not_exists(from, to).await
        }
    }

    /// A store cancelled mid-way (its task dropped, as when a job leaves the desired state)
    /// aborts its upload.
    #[tokio::test]
    async fn a_dropped_store_aborts_its_upload() {
        let aborted = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let repo = Repo {
            store: std::sync::Arc::new(Recording {
                inner: object_store::memory::InMemory::new(),
                aborted: aborted.clone(),
            }),
            prefix: object_store::path::Path::default(),
            key: None,
            retired: Vec::new(),
        };
        let read = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let seen = read.clone();
        let first: Vec<Result<Bytes, String>> = vec![Ok(Bytes::from(vec![7u8; 9 << 20]))];
        let endless = futures::stream::iter(first).chain(futures::stream::pending());
        let task = tokio::spawn(async move {
            let progress = move |n: u64| seen.store(n, std::sync::atomic::Ordering::SeqCst);
            store(&repo, "b3/data", endless.boxed(), None, &progress).await
        });
        for _ in 0..500 {
            if read.load(std::sync::atomic::Ordering::SeqCst) > 0 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert!(
            read.load(std::sync::atomic::Ordering::SeqCst) > 0,
            "the upload began"
        );
        assert!(!aborted.load(std::sync::atomic::Ordering::SeqCst));
        task.abort();
        let _ = task.await;
        for _ in 0..500 {
            if aborted.load(std::sync::atomic::Ordering::SeqCst) {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("a dropped upload was not aborted");
    }
}
