//! The real-stack harness (filled by its own work item).
