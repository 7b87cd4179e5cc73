//! storage-nvme (being written).
