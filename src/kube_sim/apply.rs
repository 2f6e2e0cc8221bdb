//! Server-side apply with managedFields (placeholder while patch.rs lands).
