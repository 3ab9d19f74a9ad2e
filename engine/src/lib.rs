//! CRIU driver: migration strategies, checkpoint image layout and manifest on the volume
