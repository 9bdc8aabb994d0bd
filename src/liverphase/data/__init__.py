"""Datasets over the preprocessed cache, augmentation and patient-level splits."""
