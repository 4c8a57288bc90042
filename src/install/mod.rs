//! `cilium install`'s rendering: Helm-style values over embedded defaults, templates of
//! every object the install applies, and the OCI image of this binary.
pub mod image;
pub mod release;
pub mod render;
pub mod strict;
pub mod strvals;
pub mod values;

/// The `manifests/` directory, embedded (also in debug builds: the binary carries its
/// manifests wherever it runs).
#[derive(rust_embed::Embed)]
#[folder = "manifests/"]
pub struct Manifests;

pub use render::{render, RenderError};
pub use values::{ValueSources, Values, ValuesError};
