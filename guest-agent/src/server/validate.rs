//! Request checks shared by the handlers, and lookups that turn missing
//! things into NOT_FOUND.

use crate::paths::validate_id;
use crate::state::{Container, Process, State};
use std::sync::Arc;
use tonic::Status;

/// INVALID_ARGUMENT from anything displayable (messages start with the field).
pub fn invalid(e: impl std::fmt::Display) -> Status {
    Status::invalid_argument(e.to_string())
}

/// Checks `container_id` and finds the container.
pub async fn container(state: &State, id: &str) -> Result<Arc<Container>, Status> {
    validate_id("container_id", id).map_err(invalid)?;
    state
        .containers
        .lock()
        .await
        .get(id)
        .cloned()
        .ok_or_else(|| Status::not_found(format!("container_id: no container {id:?}")))
}

/// Finds a process: the container's own for an empty `exec_id`.
pub async fn process(
    state: &State,
    container_id: &str,
    exec_id: &str,
) -> Result<(Arc<Container>, Arc<Process>), Status> {
    let c = container(state, container_id).await?;
    if exec_id.is_empty() {
        let p = c.init.clone();
        return Ok((c, p));
    }
    validate_id("exec_id", exec_id).map_err(invalid)?;
    let p = c
        .execs
        .lock()
        .map_err(|_| Status::internal("exec table poisoned"))?
        .get(exec_id)
        .cloned()
        .ok_or_else(|| {
            Status::not_found(format!(
                "exec_id: no process {exec_id:?} in {container_id:?}"
            ))
        })?;
    Ok((c, p))
}
