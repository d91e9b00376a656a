//! Who speaks: speaker embeddings (and, as the diarisation code moves here, the rest).

pub mod embed;

use std::sync::{Arc, OnceLock};

use embed::SpeakerEncoder;

/// The speaker encoder at `SPEAKER_MODEL_PATH` (else the default cache path), loaded once per
/// process. Without it: a warning and `None`, the pitch + MFCC features take over, and the
/// result's `versions.diarizer` says which was used. Weights are never fetched at run time.
pub fn load_configured() -> Option<Arc<dyn SpeakerEncoder>> {
    static ENCODER: OnceLock<Option<Arc<dyn SpeakerEncoder>>> = OnceLock::new();
    ENCODER
        .get_or_init(|| {
            let path = embed::default_model_path();
            match embed::load_encoder(&path) {
                Ok(model) => Some(model),
                Err(e) => {
                    tracing::warn!(
                        path = %path.display(),
                        error = %e.message,
                        "no speaker model: diarising with pitch + MFCC features (less accurate on similar voices)"
                    );
                    None
                }
            }
        })
        .clone()
}
