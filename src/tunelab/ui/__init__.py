"""`tunelab ui`: a web dashboard over a folder of run folders (runs, studies, monitors), with run start, stop and
resume, and a chat playground served by the same engine as `tunelab serve`."""
