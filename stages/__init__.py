"""The DVC stages' entry points (`python -m stages.<name>`): thin glue from params to the library."""

# Before any stage imports torch: threads from the CPUs this process may use, short OpenMP spinning.
from robust_rlhf.runtime.threads import configure_threads

configure_threads()
