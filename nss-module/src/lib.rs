//! libnss_broker.so.2 (being written).
