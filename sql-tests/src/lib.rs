//! sqllogictest suites run through Flight SQL against a live cluster.
//! Not built yet: the runner and the `.slt` files are tracked as their own
//! piece of work.
