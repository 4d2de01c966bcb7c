//! containerd's content store and leases, as the image code uses them:
//! write a blob (digest checked by containerd at commit), read a small one,
//! label one, and hold new content under a lease until it is referenced.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio_stream::wrappers::ReceiverStream;
use weft_containerd_api::Client;
use weft_containerd_api::containerd::services::content::v1::{
    Info, InfoRequest, ReadContentRequest, UpdateRequest, WriteAction, WriteContentRequest,
    content_client::ContentClient,
};
use weft_containerd_api::containerd::services::leases::v1::{
    AddResourceRequest, CreateRequest, DeleteRequest, Resource, leases_client::LeasesClient,
};
use weft_containerd_api::containerd::types;

use super::error::ImageError;
use super::plan::Descriptor;

/// Bytes per Content.Write message: well under containerd's 16 MiB gRPC limit.
pub const CHUNK: usize = 1 << 20;

/// How long a lease protects content if weft dies before deleting it
/// (containerd's GC then collects what nothing references).
const LEASE_EXPIRY: Duration = Duration::from_secs(3600);

/// The wire form of a descriptor.
pub fn to_proto(d: &Descriptor) -> types::Descriptor {
    types::Descriptor {
        media_type: d.media_type.clone(),
        digest: d.digest.clone(),
        size: i64::try_from(d.size).unwrap_or(i64::MAX),
        annotations: d
            .annotations
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    }
}

/// A descriptor read from containerd.
pub fn from_proto(d: &types::Descriptor) -> Descriptor {
    Descriptor {
        media_type: d.media_type.clone(),
        digest: d.digest.clone(),
        size: u64::try_from(d.size).unwrap_or(0),
        annotations: d
            .annotations
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        platform: None,
    }
}

/// A lease: content and snapshots made by a client carrying it are kept
/// until it is deleted or expires.
pub struct Lease {
    id: String,
}

impl Lease {
    /// Creates a lease that expires in an hour.
    pub async fn create(client: &Client, purpose: &str) -> Result<Self, ImageError> {
        let id = format!("weft-{purpose}-{:016x}", rand::random::<u64>());
        let expire = time::OffsetDateTime::now_utc() + LEASE_EXPIRY;
        let expire = expire
            .format(&time::format_description::well_known::Rfc3339)
            .expect("a date formats");
        let mut labels = HashMap::new();
        labels.insert("containerd.io/gc.expire".to_owned(), expire);
        LeasesClient::new(client.channel())
            .create(CreateRequest {
                id: id.clone(),
                labels,
            })
            .await
            .map_err(|s| client.error("Leases.Create", s))?;
        Ok(Self { id })
    }

    /// `client`, with its calls under this lease.
    pub fn client(&self, client: &Client) -> Result<Client, ImageError> {
        Ok(client.with_lease(&self.id)?)
    }

    /// Puts snapshot `key` of `snapshotter`, made by someone else, under
    /// this lease too: the garbage collector keeps it from now on even when
    /// what referenced it goes. containerd does not check that it exists.
    pub async fn add_snapshot(
        &self,
        client: &Client,
        snapshotter: &str,
        key: &str,
    ) -> Result<(), weft_containerd_api::Error> {
        LeasesClient::new(client.channel())
            .add_resource(AddResourceRequest {
                id: self.id.clone(),
                resource: Some(Resource {
                    id: key.to_owned(),
                    r#type: format!("snapshots/{snapshotter}"),
                }),
            })
            .await
            .map_err(|s| client.error("Leases.AddResource", s))?;
        Ok(())
    }

    /// Deletes the lease: what it protected is now kept only by references
    /// (image records, GC labels). A failure is logged, not returned: the
    /// lease expires on its own.
    pub async fn delete(self, client: &Client) {
        let result = LeasesClient::new(client.channel())
            .delete(DeleteRequest {
                id: self.id.clone(),
                sync: false,
            })
            .await;
        if let Err(s) = result {
            tracing::warn!(lease = %self.id, "cannot delete lease (it expires within an hour): {}", client.error("Leases.Delete", s));
        }
    }
}

/// Writes a blob of `descriptor.size` bytes read from `data`, labelled
/// `labels`. containerd checks the size and digest at commit. A blob that is
/// there already is success (and is added to the client's lease); its
/// labels are set all the same.
pub async fn write(
    client: &Client,
    descriptor: &Descriptor,
    mut data: impl AsyncRead + Unpin + Send + 'static,
    labels: &BTreeMap<String, String>,
) -> Result<(), ImageError> {
    const CALL: &str = "Content.Write";
    let reference = format!(
        "weft-{:08x}-{}",
        rand::random::<u32>(),
        descriptor.digest.trim_start_matches("sha256:")
    );
    let total = i64::try_from(descriptor.size).unwrap_or(i64::MAX);
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    // The first message opens the writer; containerd answers AlreadyExists
    // at once when the blob is there.
    let open = WriteContentRequest {
        action: WriteAction::Stat as i32,
        r#ref: reference.clone(),
        total,
        expected: descriptor.digest.clone(),
        ..Default::default()
    };
    tx.send(open).await.expect("the receiver is here");
    let call = ContentClient::new(client.channel())
        .write(ReceiverStream::new(rx))
        .await;
    let mut responses = match call {
        Ok(r) => r.into_inner(),
        Err(s) => {
            return match client.error(CALL, s) {
                weft_containerd_api::Error::AlreadyExists { .. } => {
                    update_labels(client, &descriptor.digest, labels).await
                }
                e => Err(e.into()),
            };
        }
    };
    let commit_labels: HashMap<String, String> =
        labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    let expected = descriptor.digest.clone();
    let producer = tokio::spawn(async move {
        let mut offset = 0i64;
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = data.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            let msg = WriteContentRequest {
                action: WriteAction::Write as i32,
                r#ref: reference.clone(),
                offset,
                data: buf[..n].to_vec(),
                ..Default::default()
            };
            offset += n as i64;
            if tx.send(msg).await.is_err() {
                // containerd ended the call; its status says why.
                return Ok(());
            }
        }
        let commit = WriteContentRequest {
            action: WriteAction::Commit as i32,
            r#ref: reference,
            total,
            offset,
            expected,
            labels: commit_labels,
            ..Default::default()
        };
        let _ = tx.send(commit).await;
        Ok::<(), std::io::Error>(())
    });
    let mut committed = false;
    loop {
        match responses.message().await {
            Ok(Some(r)) => {
                if r.action == WriteAction::Commit as i32 {
                    committed = true;
                }
            }
            Ok(None) => break,
            Err(s) => {
                producer.abort();
                return match client.error(CALL, s) {
                    weft_containerd_api::Error::AlreadyExists { .. } => {
                        update_labels(client, &descriptor.digest, labels).await
                    }
                    e => Err(e.into()),
                };
            }
        }
    }
    match producer.await {
        Ok(Ok(())) => {}
        Ok(Err(source)) => {
            return Err(ImageError::Io {
                what: "cannot read the archive",
                path: Default::default(),
                source,
            });
        }
        Err(e) => panic!("blob writer panicked: {e}"),
    }
    if !committed {
        return Err(ImageError::Corrupt {
            image: descriptor.digest.clone(),
            reason: "containerd ended the write without committing it".into(),
        });
    }
    Ok(())
}

/// Sets `labels` on blob `digest`, leaving its other labels alone.
pub async fn update_labels(
    client: &Client,
    digest: &str,
    labels: &BTreeMap<String, String>,
) -> Result<(), ImageError> {
    if labels.is_empty() {
        return Ok(());
    }
    let paths = labels.keys().map(|k| format!("labels.{k}")).collect();
    ContentClient::new(client.channel())
        .update(UpdateRequest {
            info: Some(Info {
                digest: digest.to_owned(),
                labels: labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask { paths }),
        })
        .await
        .map_err(|s| client.error("Content.Update", s))?;
    Ok(())
}

/// What containerd knows of blob `digest` (size, labels).
pub async fn info(client: &Client, digest: &str) -> Result<Info, ImageError> {
    Ok(ContentClient::new(client.channel())
        .info(InfoRequest {
            digest: digest.to_owned(),
        })
        .await
        .map_err(|s| client.error("Content.Info", s))?
        .into_inner()
        .info
        .unwrap_or_default())
}

/// Reads blob `digest` whole; refuses one over `max` bytes (manifests and
/// configs are small; anything else is not read into memory).
pub async fn read(client: &Client, digest: &str, max: u64) -> Result<Vec<u8>, ImageError> {
    let mut content = ContentClient::new(client.channel());
    let info = info(client, digest).await?;
    let size = u64::try_from(info.size).unwrap_or(0);
    if size > max {
        return Err(ImageError::Corrupt {
            image: digest.to_owned(),
            reason: format!("blob of {size} bytes, over the {max}-byte limit for JSON"),
        });
    }
    let mut stream = content
        .read(ReadContentRequest {
            digest: digest.to_owned(),
            offset: 0,
            size: 0,
        })
        .await
        .map_err(|s| client.error("Content.Read", s))?
        .into_inner();
    let mut out = Vec::with_capacity(size as usize);
    while let Some(chunk) = stream
        .message()
        .await
        .map_err(|s| client.error("Content.Read", s))?
    {
        out.extend_from_slice(&chunk.data);
        if out.len() as u64 > max {
            return Err(ImageError::Corrupt {
                image: digest.to_owned(),
                reason: format!("blob over the {max}-byte limit for JSON"),
            });
        }
    }
    Ok(out)
}
