"""The cluster index: documents, passages, sentences, window vectors and terms in Milvus collections, so that any
number of `qa serve` replicas on any hosts serve one live index (`qa build ... --backend milvus --store milvus`).

`collections` names and shapes the collections and their rows, `store` reads and writes them as `qa.store.Store`
is read and written, `terms` analyses text and scores BM25 in the service, `index` loads the live build for search
and tells replicas when it moved, `build` fills a new build and switches to it. `qa.index` dispatches to them on
the manifest's `store`. Nothing here is imported by `import qa`: pymilvus loads with the first cluster index.
"""
