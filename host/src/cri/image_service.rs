//! CRI `ImageService`: PullImage, ListImages, ImageStatus, RemoveImage,
//! ImageFsInfo, over the image store.

use crate::cri::status_from_image_error;
use crate::image::pull::PullAuth;
use crate::image::{ImageRecord, ImageService};
use base64::Engine;
use moat_proto::cri::image_service_server::ImageService as CriImageService;
use moat_proto::cri::*;
use std::sync::Arc;
use tonic::{Request, Response, Status};

/// The CRI image service.
pub struct CriImages {
    images: Arc<ImageService>,
}

impl CriImages {
    /// Serves `images`.
    pub fn new(images: Arc<ImageService>) -> Self {
        Self { images }
    }
}

/// The user an image runs as, split as CRI wants it: a numeric uid, or a name.
fn image_user(rec: &ImageRecord) -> (Option<Int64Value>, String) {
    let user = rec.config_json()["config"]["User"]
        .as_str()
        .unwrap_or("")
        .to_string();
    let user = user.split(':').next().unwrap_or("").to_string();
    match user.parse::<i64>() {
        Ok(uid) => (Some(Int64Value { value: uid }), String::new()),
        Err(_) if user.is_empty() => (Some(Int64Value { value: 0 }), String::new()),
        Err(_) => (None, user),
    }
}

/// A store record as a CRI `Image`.
pub fn to_cri_image(rec: &ImageRecord) -> Image {
    let (uid, username) = image_user(rec);
    Image {
        id: rec.id.clone(),
        repo_tags: rec.repo_tags.clone(),
        repo_digests: rec.repo_digests.clone(),
        size: rec.size,
        uid,
        username,
        spec: Some(ImageSpec {
            image: rec.id.clone(),
            ..Default::default()
        }),
        pinned: false,
    }
}

/// CRI credentials as pull credentials; `auth` is base64 `user:password`.
fn pull_auth(auth: Option<AuthConfig>) -> Result<PullAuth, Status> {
    let Some(a) = auth else {
        return Ok(PullAuth::default());
    };
    let (mut username, mut password) = (a.username, a.password);
    if username.is_empty() && !a.auth.is_empty() {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(a.auth.trim())
            .map_err(|e| Status::invalid_argument(format!("auth.auth: not base64: {e}")))?;
        let text = String::from_utf8(decoded)
            .map_err(|_| Status::invalid_argument("auth.auth: not UTF-8"))?;
        let (u, p) = text.split_once(':').ok_or_else(|| {
            Status::invalid_argument("auth.auth: expected base64 of user:password")
        })?;
        (username, password) = (u.to_string(), p.to_string());
    }
    let registry_token = if a.registry_token.is_empty() {
        a.identity_token
    } else {
        a.registry_token
    };
    Ok(PullAuth {
        username,
        password,
        registry_token,
    })
}

fn image_name(spec: Option<ImageSpec>, field: &str) -> Result<String, Status> {
    let name = spec.map(|s| s.image).unwrap_or_default();
    if name.trim().is_empty() {
        return Err(Status::invalid_argument(format!(
            "{field}: image name is required"
        )));
    }
    Ok(name)
}

#[tonic::async_trait]
impl CriImageService for CriImages {
    async fn list_images(
        &self,
        req: Request<ListImagesRequest>,
    ) -> Result<Response<ListImagesResponse>, Status> {
        let filter = req
            .into_inner()
            .filter
            .and_then(|f| f.image)
            .map(|s| s.image)
            .unwrap_or_default();
        let images = if filter.is_empty() {
            self.images.list().map_err(status_from_image_error)?
        } else {
            self.images
                .resolve(&filter)
                .map_err(status_from_image_error)?
                .into_iter()
                .collect()
        };
        Ok(Response::new(ListImagesResponse {
            images: images.iter().map(to_cri_image).collect(),
        }))
    }

    async fn image_status(
        &self,
        req: Request<ImageStatusRequest>,
    ) -> Result<Response<ImageStatusResponse>, Status> {
        let req = req.into_inner();
        let name = image_name(req.image, "image")?;
        let Some(rec) = self
            .images
            .resolve(&name)
            .map_err(status_from_image_error)?
        else {
            // Not found is an empty answer, not an error (kubelet then pulls).
            return Ok(Response::new(ImageStatusResponse::default()));
        };
        let mut info = std::collections::HashMap::new();
        if req.verbose {
            let verbose = serde_json::json!({
                "id": rec.id,
                "layers": rec.layers,
                "blockImage": rec.block_image,
                "blockImageBytes": rec.block_size,
                "config": rec.config_json(),
            });
            info.insert("info".to_string(), verbose.to_string());
        }
        Ok(Response::new(ImageStatusResponse {
            image: Some(to_cri_image(&rec)),
            info,
        }))
    }

    async fn pull_image(
        &self,
        req: Request<PullImageRequest>,
    ) -> Result<Response<PullImageResponse>, Status> {
        let req = req.into_inner();
        let name = image_name(req.image, "image")?;
        let auth = pull_auth(req.auth)?;
        let images = self.images.clone();
        let rec = super::detached(async move {
            images
                .pull(&name, &auth)
                .await
                .map_err(status_from_image_error)
        })
        .await?;
        Ok(Response::new(PullImageResponse { image_ref: rec.id }))
    }

    async fn remove_image(
        &self,
        req: Request<RemoveImageRequest>,
    ) -> Result<Response<RemoveImageResponse>, Status> {
        let name = image_name(req.into_inner().image, "image")?;
        // Removing an image that is not there succeeds, as kubelet expects.
        self.images.remove(&name).map_err(status_from_image_error)?;
        Ok(Response::new(RemoveImageResponse {}))
    }

    async fn image_fs_info(
        &self,
        _req: Request<ImageFsInfoRequest>,
    ) -> Result<Response<ImageFsInfoResponse>, Status> {
        let (bytes, inodes) = self.images.fs_usage();
        let usage = FilesystemUsage {
            timestamp: crate::clock::now_ns(),
            fs_id: Some(FilesystemIdentifier {
                mountpoint: self.images.root().display().to_string(),
            }),
            used_bytes: Some(UInt64Value { value: bytes }),
            inodes_used: Some(UInt64Value { value: inodes }),
        };
        Ok(Response::new(ImageFsInfoResponse {
            image_filesystems: vec![usage.clone()],
            container_filesystems: vec![usage],
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_forms() {
        let a = pull_auth(Some(AuthConfig {
            auth: "dXNlcjpwYXNz".into(),
            ..Default::default()
        }))
        .unwrap();
        assert_eq!((a.username.as_str(), a.password.as_str()), ("user", "pass"));
        let a = pull_auth(Some(AuthConfig {
            username: "u".into(),
            password: "p".into(),
            ..Default::default()
        }))
        .unwrap();
        assert_eq!(a.username, "u");
        let e = pull_auth(Some(AuthConfig {
            auth: "!!!".into(),
            ..Default::default()
        }))
        .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(e.message().contains("auth.auth"));
        assert!(pull_auth(None).unwrap().username.is_empty());
    }

    #[test]
    fn empty_image_names_are_rejected_naming_the_field() {
        let e = image_name(Some(ImageSpec::default()), "image").unwrap_err();
        assert!(e.message().contains("image"));
        assert!(image_name(None, "image").is_err());
    }
}
