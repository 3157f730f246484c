//! Capabilities: set each of the five sets to exactly what the plan says (empty for
//! sandboxes), bounding first while CAP_SETPCAP is still effective.

use caps::CapSet;

use crate::error::{Result, SandboxError};
use crate::plan::CapSets;

fn fail(what: &str, e: caps::errors::CapsError) -> SandboxError {
    SandboxError::Setup(format!("capabilities: {what}: {e}"))
}

/// The bounding set alone (it limits only what a later exec or capset may gain).
pub fn drop_bounding(sets: &CapSets) -> Result<()> {
    for cap in caps::all() {
        if !sets.bounding.contains(&cap) {
            // A kernel older than the caps crate does not know every cap: EINVAL, nothing to drop.
            match caps::drop(None, CapSet::Bounding, cap) {
                Ok(()) => {}
                Err(_) if !caps::has_cap(None, CapSet::Bounding, cap).unwrap_or(false) => {}
                Err(e) => return Err(fail("dropping from the bounding set", e)),
            }
        }
    }
    Ok(())
}

/// Ambient, inheritable, effective and permitted, after [`drop_bounding`].
pub fn set(sets: &CapSets) -> Result<()> {
    caps::clear(None, CapSet::Ambient).map_err(|e| fail("clearing ambient", e))?;
    caps::set(None, CapSet::Inheritable, &sets.inheritable).map_err(|e| fail("inheritable", e))?;
    caps::set(None, CapSet::Effective, &sets.effective).map_err(|e| fail("effective", e))?;
    caps::set(None, CapSet::Permitted, &sets.permitted).map_err(|e| fail("permitted", e))?;
    for cap in &sets.ambient {
        caps::raise(None, CapSet::Ambient, *cap).map_err(|e| fail("raising ambient", e))?;
    }
    Ok(())
}

/// This process holds CAP_SETUID and CAP_SETGID (effective) in its user namespace: it may
/// write id maps naming any of that namespace's ids for a user namespace it creates.
pub fn may_map_any_ids() -> bool {
    let has = |cap| caps::has_cap(None, CapSet::Effective, cap).unwrap_or(false);
    has(caps::Capability::CAP_SETUID) && has(caps::Capability::CAP_SETGID)
}
