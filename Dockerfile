# cadis Streamlit app as a Hugging Face Space (Docker SDK, app_port 8501), offline on CPU with the embedded
# Fashion-MNIST default (inside the package: src/cadis/assets/). Locally: docker build -t cadis . && docker run -p 8501:8501 cadis
FROM python:3.11-slim

# Spaces run the container as user 1000; its home holds the app and anything the app writes (runs/).
# CADIS_HOSTED=1: visitors share this server, so each sees only their own runs, and heavy jobs are capped and queue.
RUN useradd -m -u 1000 user
ENV HOME=/home/user \
    PATH=/home/user/.local/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 \
    CADIS_HOSTED=1 \
    STREAMLIT_BROWSER_GATHER_USAGE_STATS=false
WORKDIR /home/user/app

# CPU wheels of torch/torchvision first (the PyPI default brings CUDA: gigabytes unused on a CPU Space);
# requirements.txt pins the same versions, so pip keeps them.
COPY --chown=user requirements.txt .
RUN pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu torch==2.14.1 torchvision==0.29.1 \
    && pip install --no-cache-dir -r requirements.txt

# Only what the app needs: the library (installed), the apps and the shipped results; no runs/, tests or git history.
COPY --chown=user pyproject.toml README.md ./
COPY --chown=user src src
RUN pip install --no-cache-dir --no-deps .
COPY --chown=user app.py gradio_app.py ./
COPY --chown=user .streamlit .streamlit
COPY --chown=user apps apps
COPY --chown=user experiments/results experiments/results
RUN mkdir -p runs && chown -R user:user /home/user/app
USER user

EXPOSE 8501
HEALTHCHECK CMD python -c "import urllib.request; urllib.request.urlopen('http://localhost:8501/_stcore/health')"
# XSRF/CORS off: Spaces embed the app in an iframe on another origin, where uploads otherwise fail with 403.
CMD ["streamlit", "run", "app.py", "--server.port=8501", "--server.address=0.0.0.0", "--server.headless=true", \
     "--server.enableXsrfProtection=false", "--server.enableCORS=false", "--client.toolbarMode=viewer"]
