use gpuhal_hal::Backend;

use crate::case::Case;

pub(crate) fn cases<B: Backend>() -> Vec<Case<B>> {
    Vec::new()
}
