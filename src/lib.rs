//! eds: store-and-forward gateway for Shopmonkey change-data capture.
