"""OCR test settings: the PP-OCRv4 recogniser's geometry (ppocr_rec's config), for tests
of the crop and postprocess code that need it without loading the contract."""
RECOGNISER = dict(rec_height=48, rec_opt_width=320, rec_max_width=2048, rec_stride=8)
