"""Reading and writing studies: nnU-Net raw datasets, DICOM folders, prediction outputs."""
