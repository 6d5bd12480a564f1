//! The `coffer.v1` gRPC API: message types and tonic stubs generated from
//! `proto/coffer/v1/*.proto` by `scripts/protogen` (committed, and checked
//! by `.ci/run`, so that building Coffer needs no code generator).

#![allow(clippy::all, missing_debug_implementations, unreachable_pub)]

include!("pb/coffer.v1.rs");

/// The encoded `FileDescriptorSet` of every `coffer.v1` file, for server
/// reflection.
#[allow(dead_code)]
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!("pb/coffer.v1.bin");

/// Shows a secret's name and labels, and only the size of its data.
impl std::fmt::Debug for CreateSecretRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreateSecretRequest")
            .field("name", &self.name)
            .field("labels", &self.labels)
            .field(
                "data",
                &format_args!("[redacted; {} bytes]", self.data.len()),
            )
            .finish()
    }
}

/// Shows which secret, and only the size of its new data.
impl std::fmt::Debug for RotateSecretRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RotateSecretRequest")
            .field("secret", &self.secret)
            .field(
                "data",
                &format_args!("[redacted; {} bytes]", self.data.len()),
            )
            .finish()
    }
}

/// Shows which file of which secret, and only the size of its data.
impl std::fmt::Debug for SecretFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretFile")
            .field("target", &self.target)
            .field("uid", &self.uid)
            .field("gid", &self.gid)
            .field("mode", &format_args!("{:o}", self.mode))
            .field("secret_id", &self.secret_id)
            .field("version", &self.version)
            .field(
                "data",
                &format_args!("[redacted; {} bytes]", self.data.len()),
            )
            .finish()
    }
}

/// Never shows the key.
impl std::fmt::Debug for UnlockRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UnlockRequest")
            .field("key", &"[redacted]")
            .finish()
    }
}

/// Never shows the key.
impl std::fmt::Debug for UnlockKeyResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UnlockKeyResponse")
            .field("key", &"[redacted]")
            .finish()
    }
}

/// Never shows the key.
impl std::fmt::Debug for UpdateClusterResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpdateClusterResponse")
            .field("unlock_key", &"[redacted]")
            .finish()
    }
}

/// Never shows the frame (it holds the store's data in the clear).
impl std::fmt::Debug for SnapshotFrame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotFrame")
            .field("frame", &format_args!("[{} bytes]", self.frame.len()))
            .finish()
    }
}

/// Never shows a frame (snapshot frames between members are plaintext
/// inside the TLS connection).
impl std::fmt::Debug for SnapshotChunk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let chunk = match &self.chunk {
            Some(snapshot_chunk::Chunk::Vote(v)) => format!("vote [{} bytes]", v.len()),
            Some(snapshot_chunk::Chunk::Frame(frame)) => format!("frame [{} bytes]", frame.len()),
            None => "none".to_string(),
        };
        f.debug_struct("SnapshotChunk")
            .field("chunk", &chunk)
            .finish()
    }
}

/// Carries a CA's private key: its length is all `Debug` shows of it.
impl std::fmt::Debug for RotateCaRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RotateCaRequest")
            .field("ca_cert_pem_len", &self.ca_cert_pem.len())
            .field("ca_key_pem", &"[redacted]")
            .field("cert_expiry_secs", &self.cert_expiry_secs)
            .finish()
    }
}
