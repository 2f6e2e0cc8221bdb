//! Helpers shared by the gRPC services: credential extraction and error mapping.

use super::store::StoreError;
use ds_core::validate::cut;
use tonic::{Request, Status};

/// The bearer credential of a request, without its `Bearer ` prefix.
///
/// # Errors
/// UNAUTHENTICATED when the `authorization` metadata is missing or malformed; the
/// message never repeats what was sent.
pub fn bearer<T>(req: &Request<T>) -> Result<&str, Status> {
    let value = req
        .metadata()
        .get("authorization")
        .ok_or_else(|| Status::unauthenticated("missing authorization: Bearer credential"))?;
    let value = value
        .to_str()
        .map_err(|_| Status::unauthenticated("malformed authorization metadata"))?;
    value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .map(str::trim)
        .ok_or_else(|| Status::unauthenticated("authorization must be a Bearer credential"))
}

/// Maps a store error to a gRPC status. Database details are logged, not sent.
pub fn store_status(error: StoreError) -> Status {
    match error {
        // `what` names the object as the caller gave it: never repeat a huge one whole.
        StoreError::NotFound(what) => Status::not_found(format!("{} not found", cut(&what))),
        StoreError::AlreadyExists(what) => {
            Status::already_exists(format!("{} already exists", cut(&what)))
        }
        StoreError::Refused(why) => Status::failed_precondition(why),
        StoreError::InUse(why) => Status::failed_precondition(why),
        StoreError::Invalid(e) => Status::invalid_argument(e.to_string()),
        StoreError::Conflict(what) => {
            Status::aborted(format!("{} was changed concurrently; retry", cut(&what)))
        }
        other => {
            tracing::error!(error = %other, "store failure");
            Status::internal("internal storage error")
        }
    }
}
