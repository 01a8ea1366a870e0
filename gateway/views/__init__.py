"""The operator's views: `tollgate report`, the live dashboard and the charts."""
