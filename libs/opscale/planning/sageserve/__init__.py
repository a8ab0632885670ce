"""SageServe's planning policies: its reactive scaler, the long-term ILP variants (LT-I, LT-U, LT-UA) and
`sageserve_mip`, the multi-region MIP as a planning policy."""
