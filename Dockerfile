# Small runtime image: `python -m bot` as a non-root user, database in the /app/data volume.
FROM python:3.12-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY bot ./bot
COPY cogs ./cogs
RUN pip install --no-cache-dir --prefix=/install .

FROM python:3.12-slim
ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 DATABASE_URL=sqlite:////app/data/palette.db
COPY --from=build /install /usr/local
RUN useradd --create-home --uid 10001 palette && mkdir -p /app/data && chown palette /app/data
WORKDIR /app
USER palette
VOLUME ["/app/data"]
ENTRYPOINT ["python", "-m", "bot"]
