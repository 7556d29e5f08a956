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

/// Stores `input` as `rel` in `repo`, compressed with `zstd` if given. On any failure, and
/// when the future is dropped unfinished, the multipart upload is aborted: no partial object
/// is left. `progress` is told the source bytes read so far.
pub async fn store<E: std::fmt::Display>(
    repo: &Repo,
    rel: &str,
    input: BoxStream<'_, Result<Bytes, E>>,
    zstd: Option<Zstd>,
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
    let (mut size, mut source_bytes) = (0u64, 0u64);
    let result: Result<()> = async {
        while let Some(chunk) = input.next().await {
            let chunk = chunk.map_err(|e| Error::Source(e.to_string()))?;
            source_bytes += chunk.len() as u64;
            let out: Vec<u8> = match encoder.as_mut() {
                Some(e) => {
                    e.write_all(&chunk).map_err(Error::Compress)?;
                    std::mem::take(e.get_mut())
                }
                None => chunk.to_vec(),
            };
            if !out.is_empty() {
                hash.update(&out);
                size += out.len() as u64;
                w.wait_for_capacity(PARTS_IN_FLIGHT)
                    .await
                    .map_err(store_err)?;
                w.write(&out);
            }
            progress(source_bytes);
        }
        if let Some(e) = encoder.take() {
            let tail = e.finish().map_err(Error::Compress)?;
            hash.update(&tail);
            size += tail.len() as u64;
            w.write(&tail);
        }
        Ok(())
    }
    .await;
    let Some(w) = guard.0.take() else {
        return Err(Error::Source("the upload vanished".into()));
    };
    if let Err(e) = result {
        let _ = w.abort().await;
        return Err(e);
    }
    w.finish().await.map_err(store_err)?;
    Ok(Stored {
        path: object,
        size,
        sha256: hex::encode(hash.finalize()),
        source_bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use mofang_common::repo::RepoSpec;

    fn repo(dir: &std::path::Path) -> Repo {
        RepoSpec::Fs {
            path: dir.to_string_lossy().into_owned(),
        }
        .open()
        .unwrap()
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
