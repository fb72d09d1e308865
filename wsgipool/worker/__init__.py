"""The worker process: frame reader, request threads, wsgi.input and file_wrapper, per-request loop.

Nothing here imports aiohttp, asyncio or psutil.
"""
