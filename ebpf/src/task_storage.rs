//! Task-local storage (BPF_MAP_TYPE_TASK_STORAGE, Linux 5.11+), which
//! aya-ebpf 0.2 does not provide: a value hung off each `task_struct`,
//! reached through the task pointer without hashing or locking a shared map,
//! and freed by the kernel when the task is freed (nothing can leak).
//!
//! Local-storage maps must be BTF-defined (the kernel wants the key and
//! value type ids), so this follows the layout aya's BTF maps use: a
//! `repr(C)` struct in `.maps` whose pointer-to-array fields encode the map
//! type, key, value and flags in their BTF types.

use core::{ffi::c_void, ptr};

use aya_ebpf::bindings::{
    BPF_F_NO_PREALLOC, BPF_LOCAL_STORAGE_GET_F_CREATE, bpf_map_type::BPF_MAP_TYPE_TASK_STORAGE,
};
use aya_ebpf::helpers::generated::bpf_task_storage_get;

/// Per-task storage of one `T`.
#[repr(C)]
pub struct TaskStorage<T> {
    r#type: *const [i32; BPF_MAP_TYPE_TASK_STORAGE as usize],
    key: *const i32,
    value: *const T,
    // Local storage maps have no fixed size and must not preallocate.
    max_entries: *const [i32; 0],
    map_flags: *const [i32; BPF_F_NO_PREALLOC as usize],
}

// SAFETY: the fields are placeholders the loader reads as BTF; they are never
// dereferenced, so sharing the static between CPUs is sound.
unsafe impl<T> Sync for TaskStorage<T> {}

impl<T> TaskStorage<T> {
    /// A definition for `#[btf_map]`.
    pub const fn new() -> Self {
        Self {
            r#type: ptr::null(),
            key: ptr::null(),
            value: ptr::null(),
            max_entries: ptr::null(),
            map_flags: ptr::null(),
        }
    }

    /// The value of `task`, zero-initialised on first use. `None` if it
    /// could not be created (out of memory, or the kernel refused a nested
    /// use of task storage on this CPU).
    ///
    /// # Safety
    /// `task` must be a `struct task_struct *` the verifier knows as such
    /// (a BTF tracepoint argument).
    #[inline(always)]
    pub unsafe fn get_or_create(&self, task: *mut c_void) -> Option<*mut T> {
        // SAFETY: forwarded from the caller.
        unsafe { self.get(task, BPF_LOCAL_STORAGE_GET_F_CREATE.into()) }
    }

    /// The value of `task`, if it has one.
    ///
    /// # Safety
    /// As for [`TaskStorage::get_or_create`].
    #[inline(always)]
    pub unsafe fn get_existing(&self, task: *mut c_void) -> Option<*mut T> {
        // SAFETY: forwarded from the caller.
        unsafe { self.get(task, 0) }
    }

    #[inline(always)]
    unsafe fn get(&self, task: *mut c_void, flags: u64) -> Option<*mut T> {
        let map = ptr::from_ref(self).cast_mut().cast();
        // SAFETY: the caller vouches for `task`; `map` is this map.
        let value = unsafe { bpf_task_storage_get(map, task.cast(), ptr::null_mut(), flags) };
        (!value.is_null()).then_some(value.cast())
    }
}
