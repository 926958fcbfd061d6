//! The initiator bdev module (bdev_nvme_attach_controller).
