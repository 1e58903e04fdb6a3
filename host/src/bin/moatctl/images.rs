//! Image commands: `pull`, `images`, `rmi`.

use moat_proto::cri::image_service_client::ImageServiceClient;
use moat_proto::cri::*;
use tonic::transport::Channel;

/// Pulls `image`, with `creds` (`user:password`) if given.
pub async fn pull(
    img: &mut ImageServiceClient<Channel>,
    image: String,
    creds: Option<String>,
) -> anyhow::Result<()> {
    let auth = creds.map(|c| {
        let (u, p) = c.split_once(':').unwrap_or((c.as_str(), ""));
        AuthConfig {
            username: u.into(),
            password: p.into(),
            ..Default::default()
        }
    });
    let r = img
        .pull_image(PullImageRequest {
            image: Some(ImageSpec {
                image,
                ..Default::default()
            }),
            auth,
            sandbox_config: None,
        })
        .await?
        .into_inner();
    println!("Image is up to date for {}", r.image_ref);
    Ok(())
}

/// Lists the images.
pub async fn list(img: &mut ImageServiceClient<Channel>) -> anyhow::Result<()> {
    let r = img
        .list_images(ListImagesRequest::default())
        .await?
        .into_inner();
    println!("{:<50} {:<15} {:>10}", "IMAGE", "IMAGE ID", "SIZE");
    for i in r.images {
        let id: String =
            i.id.trim_start_matches("sha256:")
                .chars()
                .take(13)
                .collect();
        let name = i
            .repo_tags
            .first()
            .or(i.repo_digests.first())
            .cloned()
            .unwrap_or_default();
        println!("{name:<50} {id:<15} {:>9.1}M", i.size as f64 / 1048576.0);
    }
    Ok(())
}

/// Removes `image`.
pub async fn remove(img: &mut ImageServiceClient<Channel>, image: String) -> anyhow::Result<()> {
    img.remove_image(RemoveImageRequest {
        image: Some(ImageSpec {
            image: image.clone(),
            ..Default::default()
        }),
    })
    .await?;
    println!("Deleted: {image}");
    Ok(())
}
