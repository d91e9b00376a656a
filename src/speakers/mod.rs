//! Who speaks: speaker embeddings (and, as the diarisation code moves here, the rest).

pub mod embed;
