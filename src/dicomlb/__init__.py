"""dicomlb: a load balancer and router for DICOM and medical-imaging HTTP networks."""

__version__ = "0.1.0"
