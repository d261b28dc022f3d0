//! Heap accounting: every allocation of the process goes through a counting allocator, so a
//! workload's peak heap (the most bytes live at once above what was live when it started) is
//! read exactly, unlike the resident high-water mark, which keeps what the allocator held from
//! earlier runs.

use peak_alloc::PeakAlloc;

#[global_allocator]
static HEAP: PeakAlloc = PeakAlloc;

/// The heap as a measured part starts: call [`HeapMark::peak`] when it ends.
#[derive(Debug)]
pub(crate) struct HeapMark {
    base: usize,
}

impl HeapMark {
    /// Starts measuring: the peak is reset to what is live now.
    pub(crate) fn start() -> Self {
        HEAP.reset_peak_usage();
        Self { base: HEAP.current_usage() }
    }

    /// The most bytes that were live at once since [`HeapMark::start`], above what was live
    /// then.
    pub(crate) fn peak(&self) -> usize {
        HEAP.peak_usage().saturating_sub(self.base)
    }

    /// Bytes live now above what was live at [`HeapMark::start`] (what a workload kept).
    pub(crate) fn growth(&self) -> isize {
        HEAP.current_usage() as isize - self.base as isize
    }
}
